"""Probes on synthetic features, the CI formula, and the feature cache on a real source."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from md_fixtures import write_encoder, write_flat_source
from sklearn.linear_model import LogisticRegression

from bench.suite import Metric
from transfer.features import FeatureCache
from transfer.meta_dataset.episodes import draw_episodes
from transfer.meta_dataset.evaluate import episode_rows, run_episodes, source_features
from transfer.meta_dataset.probes import LOGREG_C, EpisodeRows, evaluate_probes, logreg_logits, pad_episodes
from transfer.meta_dataset.spec import load_spec


def synthetic_episodes(separation: float, count: int = 40, dim: int = 64, seed: int = 0):
    """Features of 8 classes around random centres; episodes of 3..8 ways, 1..20 shots, 10 queries."""
    rng = np.random.default_rng(seed)
    classes, per_class = 8, 60
    centres = rng.normal(size=(classes, dim)) * separation
    features = (centres[:, None, :] + rng.normal(size=(classes, per_class, dim))).reshape(-1, dim).astype(np.float32)
    episodes = []
    for _ in range(count):
        way = int(rng.integers(3, classes + 1))
        chosen = rng.choice(classes, way, replace=False)
        s_rows, s_labels, q_rows, q_labels = [], [], [], []
        for label, c in enumerate(chosen):
            shots = int(rng.integers(1, 21))
            rows = c * per_class + rng.permutation(per_class)[: shots + 10]
            s_rows += list(rows[:shots])
            s_labels += [label] * shots
            q_rows += list(rows[shots:])
            q_labels += [label] * 10
        episodes.append(EpisodeRows(np.array(s_rows), np.array(s_labels), np.array(q_rows), np.array(q_labels)))
    return features, episodes


@pytest.mark.slow
def test_probes_reach_100_percent_on_separable_features():
    features, episodes = synthetic_episodes(separation=10.0)
    accuracies = evaluate_probes(features, episodes, ("ncc", "logreg", "sgd"), chunk=16)
    for probe in ("ncc", "logreg", "sgd"):
        assert accuracies[probe].shape == (len(episodes),)
        assert accuracies[probe].min() == 1.0, probe
    euclidean = evaluate_probes(features, episodes, ("ncc",), distance="euclidean")
    assert euclidean["ncc"].min() == 1.0


def test_probes_are_near_chance_on_pure_noise():
    features, episodes = synthetic_episodes(separation=0.0, count=60)
    accuracies = evaluate_probes(features, episodes, ("ncc", "logreg"))
    chance = np.mean([1.0 / e.way for e in episodes])
    for probe in ("ncc", "logreg"):
        assert abs(accuracies[probe].mean() - chance) < 0.08, probe


def test_batched_logreg_matches_sklearn_on_each_episode():
    features, episodes = synthetic_episodes(separation=0.35, count=12, dim=32, seed=1)
    batch = pad_episodes(torch.from_numpy(features), episodes)  # padded: different ways and sizes
    predictions = logreg_logits(batch, max_iter=200).argmax(-1).numpy()
    agree = []
    for i, e in enumerate(episodes):
        mean = features[e.support_rows].mean(0)
        normalise = lambda x, mean=mean: (x - mean) / np.linalg.norm(x - mean, axis=1, keepdims=True)  # noqa: E731
        reference = LogisticRegression(C=LOGREG_C, max_iter=2000, tol=1e-8).fit(
            normalise(features[e.support_rows]), e.support_labels)
        expected = reference.predict(normalise(features[e.query_rows]))
        agree.append((predictions[i, : len(expected)] == expected).mean())
    assert np.mean(agree) > 0.98
    # episode order does not change an episode's result (chunks are sorted by support size inside)
    forward = evaluate_probes(features, episodes, ("logreg",), chunk=5)["logreg"]
    backward = evaluate_probes(features, episodes[::-1], ("logreg",), chunk=5)["logreg"][::-1]
    assert np.allclose(forward, backward, atol=0.02)


def test_episode_ci95_keeps_the_meta_dataset_convention_and_other_means_get_student_t():
    from scipy import stats

    from bench.suites.meta_dataset import MetaDatasetSuite

    values = [0.5, 0.75, 1.0, 0.25, 0.5]
    ids = [f"e{i}" for i in range(5)]
    episodes = Metric.from_samples(values, ids, interval=MetaDatasetSuite.sample_interval)
    std = math.sqrt(sum((v - 0.6) ** 2 for v in values) / 5)  # ddof = 0
    assert episodes.mean == pytest.approx(0.6) and episodes.std == pytest.approx(std)
    assert episodes.ci95 == pytest.approx(1.96 * std / math.sqrt(5))
    other = Metric.from_samples(values, ids)  # any other suite: Student's t, same mean and std
    assert (other.mean, other.std) == (episodes.mean, episodes.std)
    assert other.ci95 == pytest.approx(stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5))


@pytest.mark.slow
def test_feature_cache_hit_and_miss_on_a_real_source(tmp_path):
    from pretrain.checkpoint import load_encoder

    spec = load_spec(write_flat_source(tmp_path / "records", "vgg_flower", split_counts=(0, 0, 5), images=(12, 14)))
    episodes = draw_episodes(spec, "TEST", "variable", 20, seed=0)
    encoder = load_encoder(write_encoder(tmp_path / "enc.pt"))
    cache = FeatureCache(tmp_path / "cache")
    first = source_features(encoder, spec, episodes.used_images(), 32, cache, "cpu", batch_size=16)
    assert (cache.misses, cache.hits, first.cached) == (1, 0, False)
    assert first.features.shape == (len(episodes.used_images()), 512)
    again = source_features(encoder, spec, episodes.used_images(), 32, cache, "cpu", batch_size=16)
    assert (cache.misses, cache.hits, again.cached) == (1, 1, True)
    assert np.array_equal(first.features, again.features)
    other_size = source_features(encoder, spec, episodes.used_images(), 40, cache, "cpu", batch_size=16)
    assert cache.misses == 2 and not other_size.cached  # image size is part of the key
    # cached features match a fresh extraction of single images (order and preprocessing agree)
    single = source_features(encoder, spec, [first.images[3]], 32, cache, "cpu")
    assert np.allclose(single.features[0], first.features[3], atol=1e-4)
    # colour-coded classes: even a random encoder's features separate them
    accuracies, _ = run_episodes(first, episodes, ("ncc", "logreg"))
    assert accuracies["ncc"].mean() > 0.9 and accuracies["logreg"].mean() > 0.9
    assert len(episode_rows(episodes, first)) == 20
