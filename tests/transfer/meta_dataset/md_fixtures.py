"""Small sources in the real Meta-Dataset format (TFRecords written by TensorFlow, JPEG images,
dataset_spec.json in each of the three schemas) and a real, randomly initialised encoder file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pretrain.backbones import build_backbone
from pretrain.checkpoint import save_encoder, untrained_metadata
from transfer.meta_dataset import records


def class_images(class_id: int, count: int, size: int = 16) -> list[bytes]:
    """JPEGs whose mean colour depends on the class (separable), with pixel noise."""
    rng = np.random.default_rng(class_id)
    colour = rng.uniform(30, 225, size=3)
    return [
        records.encode_jpeg(np.clip(colour + rng.normal(0, 15, size=(size, size, 3)), 0, 255).astype(np.uint8))
        for _ in range(count)
    ]


def write_classes(folder: Path, counts: dict[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for class_id, count in counts.items():
        records.write_records(folder / f"{class_id}.tfrecords", class_images(class_id, count), class_id)


def write_flat_source(root: Path, name: str = "aircraft", split_counts=(3, 2, 6), images=(8, 12)) -> Path:
    """DatasetSpecification; class c has images[0] + (c % (images[1]-images[0]+1)) images."""
    folder = root / name
    total = sum(split_counts)
    counts = {c: images[0] + c % (images[1] - images[0] + 1) for c in range(total)}
    write_classes(folder, counts)
    spec = {
        "__class__": "DatasetSpecification",
        "name": name,
        "classes_per_split": dict(zip(("TRAIN", "VALID", "TEST"), split_counts)),
        "images_per_class": {str(c): n for c, n in counts.items()},
        "class_names": {str(c): f"class_{c}" for c in counts},
        "path": "/somewhere/else",
        "file_pattern": "{}.tfrecords",
    }
    (folder / "dataset_spec.json").write_text(json.dumps(spec, indent=2))
    return folder


def write_bilevel_source(root: Path, alphabets=((5, 6), (5,), (6, 5, 7)), images: int = 20, write_files: bool = True) -> Path:
    """BiLevelDatasetSpecification: alphabets[split] = characters per alphabet."""
    folder = root / "omniglot"
    per_super, supers, counts = {}, {}, {}
    alphabet = class_id = 0
    for split, sizes in zip(("TRAIN", "VALID", "TEST"), alphabets):
        supers[split] = len(sizes)
        for size in sizes:
            per_super[str(alphabet)] = size
            for _ in range(size):
                counts[class_id] = images
                class_id += 1
            alphabet += 1
    if write_files:
        write_classes(folder, counts)
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "__class__": "BiLevelDatasetSpecification",
        "name": "omniglot",
        "superclasses_per_split": supers,
        "classes_per_superclass": per_super,
        "images_per_class": {str(c): n for c, n in counts.items()},
        "superclass_names": {k: f"alphabet_{k}" for k in per_super},
        "class_names": {str(c): f"char_{c}" for c in counts},
        "path": "x",
        "file_pattern": "{}.tfrecords",
    }
    (folder / "dataset_spec.json").write_text(json.dumps(spec, indent=2))
    return folder


# A small WordNet-like DAG for TEST: root -> {a, b}; a -> {a1 (5 leaves), a2 (3 leaves)}; b -> 2 leaves;
# leaf "n9shared" is under both a1 and b (a DAG, not a tree). TRAIN: root_t -> 6 leaves.
def _dag_test() -> dict[str, list[str]]:
    a1 = [f"n1a1_{i}" for i in range(4)] + ["n9shared"]
    a2 = [f"n1a2_{i}" for i in range(3)]
    b = ["n2b_0", "n9shared"]
    return {"n0root": ["n1a", "n2b"], "n1a": ["n1a1", "n1a2"], "n1a1": a1, "n1a2": a2, "n2b": b}


def write_hierarchical_source(root: Path, images: int = 9, write_files: bool = True) -> Path:
    folder = root / "ilsvrc_2012"
    graphs = {"TRAIN": {"n0troot": [f"n5t_{i}" for i in range(6)]}, "VALID": {}, "TEST": _dag_test()}
    subgraphs, per_class, class_names, counts = {}, {}, {}, {}
    class_id = 0
    for split in ("TRAIN", "VALID", "TEST"):
        children = graphs[split]
        nodes = set(children) | {c for kids in children.values() for c in kids}
        parents = {n: sorted(p for p, kids in children.items() if n in kids) for n in nodes}
        subgraphs[split] = [
            {"wn_id": n, "words": n, "children_ids": children.get(n, []), "parents_ids": parents[n]} for n in sorted(nodes)
        ]
        leaves = sorted(n for n in nodes if n not in children)
        spans: dict[str, set] = {}

        def span(n, children=children, spans=spans):
            if n not in spans:
                spans[n] = {n} if n not in children else set().union(*(span(c) for c in children[n]))
            return spans[n]

        per_class[split] = {n: images * len(span(n)) for n in sorted(nodes)}
        for leaf in leaves:
            class_names[str(class_id)] = leaf
            counts[class_id] = images
            class_id += 1
    if write_files:
        write_classes(folder, counts)
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "__class__": "HierarchicalDatasetSpecification",
        "name": "ilsvrc_2012",
        "split_subgraphs": subgraphs,
        "images_per_class": per_class,
        "class_names": class_names,
        "path": "x",
        "file_pattern": "{}.tfrecords",
    }
    (folder / "dataset_spec.json").write_text(json.dumps(spec, indent=2))
    return folder


def write_encoder(path: Path, seed: int = 0, sampler: str = "nce", image_size: int = 32) -> Path:
    torch.manual_seed(seed)
    metadata = untrained_metadata(arch="resnet18", stem="imagenet", image_size=image_size, mean=[0.5, 0.5, 0.5],
                                  std=[0.25, 0.25, 0.25], sampler=sampler, seed=seed)
    return save_encoder(path, build_backbone("resnet18", "imagenet"), metadata)
