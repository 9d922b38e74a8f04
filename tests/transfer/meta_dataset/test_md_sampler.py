"""Episode sampler statistics over many episodes on synthetic specs (no records needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from md_fixtures import write_bilevel_source, write_hierarchical_source

from transfer.meta_dataset.episodes import EpisodeError, EpisodeSampler, draw_episodes, linear_split
from transfer.meta_dataset.spec import SourceSpec, load_spec, spanned_leaves


def flat_spec(sizes_by_split: dict[str, list[int]], name: str = "fungi") -> SourceSpec:
    split_classes, images, start = {}, {}, 0
    for split in ("TRAIN", "VALID", "TEST"):
        sizes = sizes_by_split.get(split, [])
        split_classes[split] = list(range(start, start + len(sizes)))
        images.update({start + i: n for i, n in enumerate(sizes)})
        start += len(sizes)
    return SourceSpec(name, Path("."), "DatasetSpecification", "{}.tfrecords", split_classes, images, {})


# 60 test classes with 6..400 images: way range [5, 50], support caps bind for the large classes
SIZES = [6 + (i * 37) % 395 for i in range(60)]


def test_variable_way_shot_rules_over_many_episodes():
    spec = flat_spec({"TEST": SIZES})
    sampler = EpisodeSampler(spec, "TEST", "variable", seed=3)
    ways, beta_like = [], []
    for _ in range(1500):
        episode = sampler.sample()
        sizes = np.array([spec.images_per_class[c] for c in episode.classes])
        ways.append(episode.way)
        assert len(set(episode.classes)) == episode.way
        q = min(10, int((sizes // 2).min()))
        assert all(len(query) == q for query in episode.query)  # balanced query, q rule
        shots = np.array([len(s) for s in episode.support])
        assert (shots >= 1).all()  # every class gets a support image
        assert (shots <= sizes - q).all()
        assert shots.sum() <= 500  # max_support_set_size
        # |S| <= sum_c ceil(beta * min(100, r_c)) <= sum_c min(100, r_c) + way
        assert shots.sum() <= np.minimum(100, sizes - q).sum() + episode.way
        for class_id, support, query in zip(episode.classes, episode.support, episode.query):
            records = support + query
            assert len(set(records)) == len(records)  # no image twice in an episode
            assert all(0 <= r < spec.images_per_class[class_id] for r in records)
        beta_like.append(shots.sum() / np.minimum(100, sizes - q).sum())
    ways = np.array(ways)
    assert ways.min() == 5 and ways.max() == 50
    # way ~ UniformInteger[5, 50]: mean 27.5, and every value shows up
    assert abs(ways.mean() - 27.5) < 1.5 and len(set(ways.tolist())) == 46
    # support fraction follows beta ~ U[0, 1) (capped at 500): spread over the whole range
    assert min(beta_like) < 0.1 and max(beta_like) > 0.5


def test_shots_follow_class_size_within_the_weight_perturbation():
    spec = flat_spec({"TEST": [20] * 5 + [400] * 5})
    sampler = EpisodeSampler(spec, "TEST", "variable", seed=0)
    ratios = []
    for _ in range(400):
        episode = sampler.sample()
        shots = {c: len(s) for c, s in zip(episode.classes, episode.support)}
        small = [shots[c] for c in shots if spec.images_per_class[c] == 20]
        large = [shots[c] for c in shots if spec.images_per_class[c] == 400]
        if small and large and sum(shots.values()) > 100:
            ratios.append(np.mean(large) / np.mean(small))
    # weights n_c * exp(U[ln .5, ln 2)): large classes get several times the small classes' shots,
    # until the small ones hit their r_c cap (20 - q = 10)
    assert np.median(ratios) > 3


def test_sampler_is_deterministic_under_a_seed():
    spec = flat_spec({"TEST": SIZES})
    first = draw_episodes(spec, "TEST", "variable", 30, seed=7)
    again = draw_episodes(spec, "TEST", "variable", 30, seed=7)
    other = draw_episodes(spec, "TEST", "variable", 30, seed=8)
    assert first.to_json() == again.to_json()
    assert first.to_json()["episodes"] != other.to_json()["episodes"]


def test_class_streams_continue_a_pass_and_flush_its_short_rest():
    spec = flat_spec({"TEST": [40, 25, 30, 30, 30]})
    sampler = EpisodeSampler(spec, "TEST", "5w5s", seed=0)
    first, second = sampler._take(0, 20), sampler._take(0, 20)
    assert set(first) | set(second) == set(range(40))  # one pass of 40 covers both takes
    first, second = sampler._take(1, 20), sampler._take(1, 20)
    assert len(set(second)) == 20  # 5 left in the pass: flushed, a new pass starts
    with pytest.raises(EpisodeError, match="no class has at least 20 images"):
        EpisodeSampler(flat_spec({"TEST": [12] * 5}), "TEST", "5w5s", seed=0)


def test_fixed_settings_and_reported_exclusions():
    spec = flat_spec({"TEST": [30] * 8 + [12, 17]})
    for setting, shots in (("5w1s", 1), ("5w5s", 5)):
        episodes = draw_episodes(spec, "TEST", setting, 200, seed=1)
        assert {e.way for e in episodes.episodes} == {5}
        assert all(len(s) == shots for e in episodes.episodes for s in e.support)
        assert all(len(q) == 15 for e in episodes.episodes for q in e.query)
        used = {c for e in episodes.episodes for c in e.classes}
        small = [8, 9] if setting == "5w5s" else [8]  # 12, 17 < 5 + 15; only 12 < 1 + 15
        assert episodes.excluded_classes == small and not used & set(small)


def test_omniglot_episodes_use_one_alphabet(tmp_path):
    spec = load_spec(write_bilevel_source(tmp_path, alphabets=((5,), (), (6, 5, 9)), write_files=False))
    sampler = EpisodeSampler(spec, "TEST", "variable", seed=0)
    alphabets_seen, ways = set(), {1: [], 2: [], 3: []}  # test alphabets follow train 0 (no valid)
    for _ in range(600):
        episode = sampler.sample()
        alphabets = {spec.superclass_of[c] for c in episode.classes}
        assert len(alphabets) == 1
        alphabet = alphabets.pop()
        alphabets_seen.add(alphabet)
        ways[alphabet].append(episode.way)
        assert all(len(q) == 10 for q in episode.query)  # 20 images: q = min(10, 20 // 2)
    assert alphabets_seen == {1, 2, 3}
    assert set(ways[1]) == {5, 6} and set(ways[2]) == {5} and set(ways[3]) == {5, 6, 7, 8, 9}


def test_imagenet_episodes_are_the_leaves_of_one_eligible_node(tmp_path):
    spec = load_spec(write_hierarchical_source(tmp_path, images=20, write_files=False))
    graph = spec.split_graphs["TEST"]
    spans = spanned_leaves(graph)
    leaf_ids = spec.leaf_class_id["TEST"]
    node_classes = {w: frozenset(leaf_ids[leaf] for leaf in spans[w]) for w in graph if graph[w].children}
    # eligible: 5..392 spanned leaves -> root (9), n1a (8), n1a1 (5); not n1a2 (3) or n2b (2)
    eligible = {w for w, leaves in node_classes.items() if 5 <= len(leaves) <= 392}
    assert eligible == {"n0root", "n1a", "n1a1"}
    sampler = EpisodeSampler(spec, "TEST", "variable", seed=0)
    chosen = []
    for _ in range(600):
        episode = sampler.sample()
        matches = [w for w in eligible if node_classes[w] == frozenset(episode.classes)]
        assert len(matches) == 1  # exactly the leaf set of one eligible node (none exceeds 50)
        chosen.append(matches[0])
    counts = {w: chosen.count(w) for w in eligible}
    assert all(150 < c < 250 for c in counts.values())  # uniform over eligible nodes
    with pytest.raises(EpisodeError, match="fixed num_ways needs the class hierarchy off"):
        from transfer.meta_dataset.episodes import EpisodeConfig

        EpisodeSampler(spec, "TEST", EpisodeConfig(num_ways=5), seed=0)
    assert {e.way for e in draw_episodes(spec, "TEST", "5w1s", 20, 0).episodes} == {5}  # hierarchy off


def test_imagenet_cap_at_50_ways():
    from transfer.meta_dataset.spec import DagNode

    leaves = [f"n{i:03d}" for i in range(120)]
    graph = {"root": DagNode("root", "", leaves, [])} | {leaf: DagNode(leaf, "", [], ["root"]) for leaf in leaves}
    spec = SourceSpec("ilsvrc_2012", Path("."), "HierarchicalDatasetSpecification", "{}.tfrecords",
                      {"TRAIN": [], "VALID": [], "TEST": list(range(120))}, {i: 30 for i in range(120)}, {},
                      split_graphs={"TRAIN": {}, "VALID": {}, "TEST": graph},
                      leaf_class_id={"TRAIN": {}, "VALID": {}, "TEST": {leaf: i for i, leaf in enumerate(leaves)}})
    episodes = draw_episodes(spec, "TEST", "variable", 50, 0).episodes
    assert {e.way for e in episodes} == {50}
    assert len({c for e in episodes for c in e.classes}) > 100  # different subsets each time


def test_linear_split_is_fixed_per_class_80_20():
    spec = flat_spec({"TRAIN": [10, 50], "TEST": [21]})
    split = linear_split(spec, seed=0)
    again = linear_split(spec, seed=0)
    assert split == again
    for class_id, n in spec.images_per_class.items():
        train = [r for c, r in split["train"] if c == class_id]
        test = [r for c, r in split["test"] if c == class_id]
        assert len(train) == round(0.8 * n) and len(train) + len(test) == n and not set(train) & set(test)
    assert math.isclose(len(split["train"]) / (len(split["train"]) + len(split["test"])), 0.8, abs_tol=0.01)
