"""Meta-Dataset's episode sampler, drawing index lists (class ids and record indices) from a seed.

Variable way and shot as in Meta-Dataset's `EpisodeDescriptionSampler` with the defaults of
`data_config_common.gin`, the omniglot alphabet rule, the ImageNet DAG rule, and the fixed 5-way
1-shot / 5-shot settings (15 queries). Images are drawn from per-class shuffled streams with the
"flush" rule, so no record appears twice in an episode.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transfer.meta_dataset.spec import SourceSpec, spanned_leaves

MAX_SPANNING_LEAVES_ELIGIBLE = 392


class EpisodeError(ValueError):
    """Episodes cannot be drawn for this source and setting; the message says why."""


@dataclass(frozen=True)
class EpisodeConfig:
    num_ways: int | None = None
    num_support: int | None = None
    num_query: int | None = None
    min_ways: int = 5
    max_ways_upper_bound: int = 50
    max_num_query: int = 10
    max_support_set_size: int = 500
    max_support_size_contrib_per_class: int = 100
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)
    min_examples_in_class: int = 0
    ignore_dag_ontology: bool = False
    ignore_bilevel_ontology: bool = False
    ignore_hierarchy_probability: float = 0.0


# Fixed settings follow Meta-Dataset's fixed_way_and_shot.gin (5/5/15) and pytorch-meta-dataset's
# 1_shot.yaml (5/1/15); hierarchies must be off with a fixed way.
SHOT_SETTINGS: dict[str, EpisodeConfig] = {
    "variable": EpisodeConfig(),
    "5w1s": EpisodeConfig(num_ways=5, num_support=1, num_query=15, ignore_dag_ontology=True, ignore_bilevel_ontology=True),
    "5w5s": EpisodeConfig(num_ways=5, num_support=5, num_query=15, ignore_dag_ontology=True, ignore_bilevel_ontology=True),
}


@dataclass
class Episode:
    """Classes in draw order (episode label = position); support/query[i] are record indices of classes[i]."""

    classes: list[int]
    support: list[list[int]]
    query: list[list[int]]

    @property
    def way(self) -> int:
        return len(self.classes)

    def support_size(self) -> int:
        return sum(len(s) for s in self.support)


@dataclass
class EpisodeSet:
    source: str
    split: str
    setting: str
    seed: int
    config: EpisodeConfig
    episodes: list[Episode]
    excluded_classes: list[int]  # split classes too small for the setting (reported, never silent)

    def episode_ids(self) -> list[str]:
        return [f"{self.source}/{self.split}/{self.setting}/{i:04d}" for i in range(len(self.episodes))]

    def used_images(self) -> list[tuple[int, int]]:
        """Sorted unique (class id, record index) pairs over all episodes."""
        pairs = set()
        for episode in self.episodes:
            for class_id, support, query in zip(episode.classes, episode.support, episode.query):
                pairs.update((class_id, i) for i in support)
                pairs.update((class_id, i) for i in query)
        return sorted(pairs)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "setting": self.setting,
            "seed": self.seed,
            "config": asdict(self.config),
            "excluded_classes": self.excluded_classes,
            "episodes": [asdict(e) for e in self.episodes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeSet:
        return cls(
            source=data["source"],
            split=data["split"],
            setting=data["setting"],
            seed=int(data["seed"]),
            config=EpisodeConfig(**data["config"]),
            episodes=[Episode(**e) for e in data["episodes"]],
            excluded_classes=list(data["excluded_classes"]),
        )

    def save(self, path: str | Path) -> Path:
        from ringbench_common.atomic_files import atomic_write_text

        # a unique temporary per writer: two runners preparing the same suite never share one
        return atomic_write_text(path, json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> EpisodeSet:
        return cls.from_json(json.loads(Path(path).read_text()))


def stable_seed(*parts: Any) -> np.random.SeedSequence:
    """A seed sequence from ints and strings that does not depend on Python's hash randomisation."""
    return np.random.SeedSequence([p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts])


class EpisodeSampler:
    """Draws episodes of one split of one source; deterministic for a given seed."""

    def __init__(self, spec: SourceSpec, split: str, config: EpisodeConfig | str = "variable", seed: int = 0):
        if isinstance(config, str):
            if config not in SHOT_SETTINGS:
                raise EpisodeError(f"unknown shots setting {config!r}; valid: {', '.join(SHOT_SETTINGS)}")
            config = SHOT_SETTINGS[config]
        self.spec, self.split, self.config, self.seed = spec, split, config, seed
        # the config is part of the seed so each setting draws its own, reproducible episodes
        self.rng = np.random.Generator(np.random.PCG64(stable_seed(seed, spec.name, split, repr(config))))
        where = f"{spec.name} {split}"
        min_examples = config.min_examples_in_class
        if config.num_support is not None and config.num_query is not None:
            min_examples = max(min_examples, config.num_support + config.num_query)
        elif config.num_support is not None:
            min_examples = max(min_examples, config.num_support + 1)
        else:
            min_examples = max(min_examples, 2)  # variable shot: q = floor(n_c / 2) must be >= 1
        all_classes = spec.classes(split)
        self.sizes = {c: spec.images_per_class[c] for c in all_classes}
        self.classes = [c for c in all_classes if self.sizes[c] >= min_examples]
        self.excluded = [c for c in all_classes if self.sizes[c] < min_examples]
        self.use_bilevel = spec.schema == "BiLevelDatasetSpecification" and not config.ignore_bilevel_ontology
        self.use_dag = spec.schema == "HierarchicalDatasetSpecification" and not config.ignore_dag_ontology
        if (self.use_bilevel or self.use_dag) and config.num_ways is not None:
            raise EpisodeError(f"{where}: a fixed num_ways needs the class hierarchy off (ignore_*_ontology)")
        if not self.classes:
            raise EpisodeError(f"{where}: no class has at least {min_examples} images")
        if config.num_ways is not None and len(self.classes) < config.num_ways:
            raise EpisodeError(f"{where}: {len(self.classes)} usable classes, fewer than num_ways={config.num_ways}")
        if config.num_ways is None and len(self.classes) < config.min_ways:
            raise EpisodeError(f"{where}: {len(self.classes)} usable classes, fewer than min_ways={config.min_ways}")
        usable = set(self.classes)
        if self.use_bilevel:
            self.alphabets: dict[int, list[int]] = {}
            for c in self.classes:
                self.alphabets.setdefault(spec.superclass_of[c], []).append(c)
            small = [a for a in spec.split_superclasses[split] if len(self.alphabets.get(a, [])) < config.min_ways]
            if small:
                raise EpisodeError(f"{where}: alphabet(s) {small} have fewer than min_ways={config.min_ways} characters")
            self.alphabet_ids = sorted(self.alphabets)
        if self.use_dag:
            graph = spec.split_graphs[split]
            leaf_ids = spec.leaf_class_id[split]
            spans = spanned_leaves(graph)
            self.eligible_nodes: list[tuple[str, list[int]]] = []
            for wn_id in sorted(graph):
                if not graph[wn_id].children:
                    continue
                leaves = sorted(leaf_ids[leaf] for leaf in spans[wn_id] if leaf_ids[leaf] in usable)
                if config.min_ways <= len(leaves) <= MAX_SPANNING_LEAVES_ELIGIBLE:
                    self.eligible_nodes.append((wn_id, leaves))
            if not self.eligible_nodes:
                raise EpisodeError(f"{where}: no internal node spans {config.min_ways}..{MAX_SPANNING_LEAVES_ELIGIBLE} leaves")
        # per-class shuffled stream: current permutation and cursor
        self._streams: dict[int, tuple[np.ndarray, int]] = {}

    # -- step 1: classes ------------------------------------------------------------------------
    def _uniform_way(self, available: int) -> int:
        cfg = self.config
        return int(self.rng.integers(cfg.min_ways, min(cfg.max_ways_upper_bound, available) + 1))

    def sample_classes(self) -> list[int]:
        cfg = self.config
        hierarchy = self.use_bilevel or self.use_dag
        if hierarchy and cfg.ignore_hierarchy_probability > 0 and self.rng.uniform() < cfg.ignore_hierarchy_probability:
            hierarchy = False
        if hierarchy and self.use_bilevel:
            alphabet = self.alphabet_ids[int(self.rng.integers(len(self.alphabet_ids)))]
            chars = self.alphabets[alphabet]
            way = self._uniform_way(len(chars))
            return [int(c) for c in self.rng.choice(chars, size=way, replace=False)]
        if hierarchy and self.use_dag:
            _, leaves = self.eligible_nodes[int(self.rng.integers(len(self.eligible_nodes)))]
            if len(leaves) > cfg.max_ways_upper_bound:
                return [int(c) for c in self.rng.choice(leaves, size=cfg.max_ways_upper_bound, replace=False)]
            return [int(c) for c in self.rng.permutation(leaves)]
        way = cfg.num_ways if cfg.num_ways is not None else self._uniform_way(len(self.classes))
        return [int(c) for c in self.rng.choice(self.classes, size=way, replace=False)]

    # -- steps 2-4: query size and shots ----------------------------------------------------------
    def num_query(self, sizes: np.ndarray) -> int:
        cfg = self.config
        if cfg.num_query is not None:
            return cfg.num_query
        if cfg.num_support is not None:
            return int(min(cfg.max_num_query, sizes.min() - cfg.num_support))
        return int(min(cfg.max_num_query, (sizes // 2).min()))

    def shots(self, sizes: np.ndarray, num_query: int) -> np.ndarray:
        cfg = self.config
        way = len(sizes)
        if cfg.num_support is not None:
            return np.full(way, cfg.num_support, dtype=np.int64)
        remaining = sizes - num_query
        contributions = np.minimum(cfg.max_support_size_contrib_per_class, remaining)
        beta = self.rng.uniform()
        support_size = int(np.floor(beta * contributions + 1).astype(np.int64).sum())
        support_size = min(support_size, cfg.max_support_set_size)
        if support_size < way:
            raise EpisodeError(f"max_support_set_size={cfg.max_support_set_size} is smaller than the way {way}")
        log_weights = self.rng.uniform(cfg.min_log_weight, cfg.max_log_weight, size=way)
        weights = np.exp(log_weights) * sizes
        proportions = weights / weights.sum()
        return np.minimum(np.floor(proportions * (support_size - way)).astype(np.int64) + 1, remaining)

    # -- step 5: images ---------------------------------------------------------------------------
    def _take(self, class_id: int, count: int) -> list[int]:
        """Next `count` records of the class stream; a pass too short for them is flushed."""
        order, cursor = self._streams.get(class_id, (None, 0))
        if order is None or cursor + count > len(order):
            order, cursor = self.rng.permutation(self.sizes[class_id]), 0
        self._streams[class_id] = (order, cursor + count)
        return [int(i) for i in order[cursor : cursor + count]]

    def sample(self) -> Episode:
        classes = self.sample_classes()
        sizes = np.array([self.sizes[c] for c in classes], dtype=np.int64)
        query_size = self.num_query(sizes)
        shots = self.shots(sizes, query_size)
        support, query = [], []
        for class_id, k in zip(classes, shots):
            records = self._take(class_id, int(k) + query_size)
            support.append(records[: int(k)])
            query.append(records[int(k) :])
        return Episode(classes=classes, support=support, query=query)


def draw_episodes(spec: SourceSpec, split: str, setting: str, count: int, seed: int) -> EpisodeSet:
    if setting not in SHOT_SETTINGS:
        raise EpisodeError(f"unknown shots setting {setting!r}; valid: {', '.join(SHOT_SETTINGS)}")
    sampler = EpisodeSampler(spec, split, SHOT_SETTINGS[setting], seed=seed)
    episodes = [sampler.sample() for _ in range(count)]
    return EpisodeSet(spec.name, split, setting, seed, sampler.config, episodes, sampler.excluded)


def linear_split(spec: SourceSpec, seed: int, train_fraction: float = 0.8, max_per_class: int = 0) -> dict[str, list[tuple[int, int]]]:
    """The Ring paper's protocol: every class of the source, a fixed per-class train/test split.

    Returns {"train": [(class id, record)], "test": [...]}; `max_per_class` > 0 caps each class
    (after the seeded shuffle) for very large sources.
    """
    rng = np.random.Generator(np.random.PCG64(stable_seed(seed, spec.name, "linear")))
    out: dict[str, list[tuple[int, int]]] = {"train": [], "test": []}
    for class_id in sorted(spec.images_per_class):
        n = spec.images_per_class[class_id]
        order = rng.permutation(n)
        if max_per_class > 0:
            order = order[:max_per_class]
        if len(order) < 2:
            raise EpisodeError(f"{spec.name}: class {class_id} has {n} image(s); the linear split needs at least 2")
        n_train = min(max(1, int(round(train_fraction * len(order)))), len(order) - 1)
        out["train"].extend((class_id, int(i)) for i in sorted(order[:n_train]))
        out["test"].extend((class_id, int(i)) for i in sorted(order[n_train:]))
    return out
