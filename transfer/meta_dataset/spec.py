"""`dataset_spec.json` in its three Meta-Dataset schemas, reduced to one `SourceSpec`.

Class ids are absolute over the source and contiguous per split in the order TRAIN, VALID, TEST;
class c lives in `<source>/<file_pattern.format(c)>`. Bilevel (omniglot) specs keep the alphabet of
every class; hierarchical (ilsvrc_2012) specs keep each split's WordNet DAG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("TRAIN", "VALID", "TEST")
SCHEMAS = ("DatasetSpecification", "BiLevelDatasetSpecification", "HierarchicalDatasetSpecification")
SPEC_FILE = "dataset_spec.json"


class SpecError(ValueError):
    """A dataset_spec.json that cannot be used; the message names the file and the key."""


@dataclass
class DagNode:
    wn_id: str
    words: str
    children: list[str]
    parents: list[str]


@dataclass
class SourceSpec:
    name: str
    path: Path  # the folder holding the spec and the class files
    schema: str
    file_pattern: str
    split_classes: dict[str, list[int]]  # split -> absolute class ids, in id order
    images_per_class: dict[int, int]
    class_names: dict[int, str]
    # bilevel only
    split_superclasses: dict[str, list[int]] = field(default_factory=dict)
    superclass_of: dict[int, int] = field(default_factory=dict)  # class id -> alphabet id
    superclass_names: dict[int, str] = field(default_factory=dict)
    # hierarchical only: split -> wn_id -> node
    split_graphs: dict[str, dict[str, DagNode]] = field(default_factory=dict)
    leaf_class_id: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> leaf wn_id -> class id

    @property
    def num_classes(self) -> int:
        return sum(len(ids) for ids in self.split_classes.values())

    def class_file(self, class_id: int) -> Path:
        return self.path / self.file_pattern.format(class_id)

    def classes(self, split: str) -> list[int]:
        if split not in SPLITS:
            raise SpecError(f"{self.path / SPEC_FILE}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return self.split_classes[split]

    def split_of(self, class_id: int) -> str:
        for split, ids in self.split_classes.items():
            if ids and ids[0] <= class_id <= ids[-1]:
                return split
        raise KeyError(class_id)

    def summary(self) -> str:
        counts = "/".join(str(len(self.split_classes[s])) for s in SPLITS)
        return f"{self.schema}, {self.num_classes} classes (train/valid/test {counts})"


def _require(data: dict, key: str, where: Path) -> Any:
    if key not in data:
        raise SpecError(f"{where}: missing key {key!r}")
    return data[key]


def _int_keyed(mapping: Any, key: str, where: Path) -> dict[int, Any]:
    if not isinstance(mapping, dict):
        raise SpecError(f"{where}: {key!r} must be an object keyed by class id, got {type(mapping).__name__}")
    out = {}
    for raw, value in mapping.items():
        try:
            out[int(raw)] = value
        except ValueError:
            raise SpecError(f"{where}: {key!r} has non-integer key {raw!r}") from None
    return out


def _count(value: Any, what: str, where: Path) -> int:
    if isinstance(value, dict):  # example-level pools: {pool_name: count}
        return sum(_count(v, what, where) for v in value.values())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    return value


def _split_counts(data: dict, key: str, where: Path) -> dict[str, int]:
    raw = _require(data, key, where)
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: {key!r} must map TRAIN/VALID/TEST to counts")
    unknown = sorted(set(raw) - set(SPLITS))
    if unknown:
        raise SpecError(f"{where}: {key!r} has unknown split(s) {unknown}; expected {', '.join(SPLITS)}")
    # Splits may be absent (e.g. test-only sources written by other tools): count them as empty.
    return {split: _count(raw.get(split, 0), f"{key}[{split!r}]", where) for split in SPLITS}


def _contiguous(counts: dict[str, int]) -> dict[str, list[int]]:
    start, out = 0, {}
    for split in SPLITS:
        out[split] = list(range(start, start + counts[split]))
        start += counts[split]
    return out


def load_spec(source_dir: str | Path) -> SourceSpec:
    """Parse `<source_dir>/dataset_spec.json` (any of the three schemas); `path` becomes `source_dir`."""
    source_dir = Path(source_dir)
    where = source_dir / SPEC_FILE
    if not where.is_file():
        raise SpecError(f"{where}: no dataset_spec.json in source folder {source_dir}")
    try:
        data = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpecError(f"{where}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a JSON object")
    schema = _require(data, "__class__", where)
    if schema not in SCHEMAS:
        raise SpecError(f"{where}: unknown __class__ {schema!r}; expected one of {', '.join(SCHEMAS)}")
    file_pattern = data.get("file_pattern", "{}.tfrecords")
    if file_pattern != "{}.tfrecords":
        raise SpecError(f"{where}: file_pattern {file_pattern!r} is not supported; expected '{{}}.tfrecords'")
    name = str(data.get("name") or source_dir.name)
    class_names = {k: str(v) for k, v in _int_keyed(data.get("class_names", {}), "class_names", where).items()}
    common = dict(name=name, path=source_dir, schema=schema, file_pattern=file_pattern, class_names=class_names)
    if schema == "DatasetSpecification":
        spec = _parse_flat(data, where, common)
    elif schema == "BiLevelDatasetSpecification":
        spec = _parse_bilevel(data, where, common)
    else:
        spec = _parse_hierarchical(data, where, common)
    missing_counts = [c for ids in spec.split_classes.values() for c in ids if c not in spec.images_per_class]
    if missing_counts:
        raise SpecError(f"{where}: images_per_class lacks class id(s) {missing_counts[:10]}")
    return spec


def _parse_flat(data: dict, where: Path, common: dict) -> SourceSpec:
    split_classes = _contiguous(_split_counts(data, "classes_per_split", where))
    raw = _int_keyed(_require(data, "images_per_class", where), "images_per_class", where)
    images = {c: _count(v, f"images_per_class[{c}]", where) for c, v in raw.items()}
    return SourceSpec(split_classes=split_classes, images_per_class=images, **common)


def _parse_bilevel(data: dict, where: Path, common: dict) -> SourceSpec:
    supers = _contiguous(_split_counts(data, "superclasses_per_split", where))
    raw_per = _int_keyed(_require(data, "classes_per_superclass", where), "classes_per_superclass", where)
    per_super = {s: _count(v, f"classes_per_superclass[{s}]", where) for s, v in raw_per.items()}
    total_supers = sum(len(v) for v in supers.values())
    if sorted(per_super) != list(range(total_supers)):
        raise SpecError(
            f"{where}: classes_per_superclass must have keys 0..{total_supers - 1} "
            f"(superclasses_per_split sums to {total_supers}), got {len(per_super)} keys"
        )
    split_classes: dict[str, list[int]] = {}
    superclass_of: dict[int, int] = {}
    start = 0
    for split in SPLITS:
        ids = []
        for alphabet in supers[split]:
            for offset in range(per_super[alphabet]):
                superclass_of[start + offset] = alphabet
                ids.append(start + offset)
            start += per_super[alphabet]
        split_classes[split] = ids
    raw = _int_keyed(_require(data, "images_per_class", where), "images_per_class", where)
    images = {c: _count(v, f"images_per_class[{c}]", where) for c, v in raw.items()}
    names = {k: str(v) for k, v in _int_keyed(data.get("superclass_names", {}), "superclass_names", where).items()}
    return SourceSpec(
        split_classes=split_classes,
        images_per_class=images,
        split_superclasses=supers,
        superclass_of=superclass_of,
        superclass_names=names,
        **common,
    )


def _parse_hierarchical(data: dict, where: Path, common: dict) -> SourceSpec:
    subgraphs = _require(data, "split_subgraphs", where)
    per_split_counts = _require(data, "images_per_class", where)
    if not isinstance(subgraphs, dict) or not isinstance(per_split_counts, dict):
        raise SpecError(f"{where}: split_subgraphs and images_per_class must be objects keyed by split")
    graphs: dict[str, dict[str, DagNode]] = {}
    split_classes: dict[str, list[int]] = {}
    leaf_class_id: dict[str, dict[str, int]] = {}
    images: dict[int, int] = {}
    next_id = 0
    for split in SPLITS:
        nodes_raw = subgraphs.get(split, [])
        if not isinstance(nodes_raw, list):
            raise SpecError(f"{where}: split_subgraphs[{split!r}] must be a list of nodes")
        graph: dict[str, DagNode] = {}
        for index, node in enumerate(nodes_raw):
            try:
                wn_id = str(node["wn_id"])
                parsed = DagNode(wn_id, str(node.get("words", "")), list(node["children_ids"]), list(node["parents_ids"]))
            except (KeyError, TypeError):
                raise SpecError(
                    f"{where}: split_subgraphs[{split!r}][{index}] needs wn_id, children_ids and parents_ids"
                ) from None
            if wn_id in graph:
                first = next(i for i, other in enumerate(nodes_raw) if str(other.get("wn_id")) == wn_id)
                raise SpecError(f"{where}: split_subgraphs[{split!r}] lists wn_id {wn_id} twice "
                                f"(nodes {first} and {index}); each node must appear once per split")
            graph[wn_id] = parsed
        for node in graph.values():
            for child in node.children:
                if child not in graph:
                    raise SpecError(f"{where}: split_subgraphs[{split!r}]: {node.wn_id} has unknown child {child}")
        _check_acyclic(graph, where, split)
        counts = per_split_counts.get(split, {})
        leaves = sorted(wn for wn, node in graph.items() if not node.children)
        ids = {}
        for wn_id in leaves:
            if wn_id not in counts:
                raise SpecError(f"{where}: images_per_class[{split!r}] lacks leaf {wn_id}")
            images[next_id] = _count(counts[wn_id], f"images_per_class[{split!r}][{wn_id!r}]", where)
            ids[wn_id] = next_id
            next_id += 1
        graphs[split] = graph
        leaf_class_id[split] = ids
        split_classes[split] = list(ids.values())
    class_names = common["class_names"]
    for split in SPLITS:
        for wn_id, class_id in leaf_class_id[split].items():
            if class_names.get(class_id, wn_id) != wn_id:
                raise SpecError(
                    f"{where}: class_names[{class_id}] is {class_names[class_id]!r} but leaf order "
                    f"(sorted wn_id within {split}) puts {wn_id} there"
                )
    return SourceSpec(split_classes=split_classes, images_per_class=images, split_graphs=graphs, leaf_class_id=leaf_class_id, **common)


def _check_acyclic(graph: dict[str, DagNode], where: Path, split: str) -> None:
    """Refuse a cycle in a split's hierarchy, naming it (iterative, so no RecursionError on deep graphs)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(graph[root].children)]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                raise SpecError(f"{where}: split_subgraphs[{split!r}] has a cycle: {' -> '.join(cycle)} "
                                "(a hierarchy must be a DAG)")
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(graph[child].children))


def spanned_leaves(graph: dict[str, DagNode]) -> dict[str, frozenset[str]]:
    """wn_id -> the leaves reachable from it (a leaf spans itself)."""
    memo: dict[str, frozenset[str]] = {}

    def visit(wn_id: str) -> frozenset[str]:
        if wn_id not in memo:
            node = graph[wn_id]
            if not node.children:
                memo[wn_id] = frozenset([wn_id])
            else:
                memo[wn_id] = frozenset().union(*(visit(child) for child in node.children))
        return memo[wn_id]

    for wn_id in sorted(graph):
        visit(wn_id)
    return memo


def find_sources(records: str | Path) -> list[Path]:
    """Every sub-folder of `records` (sorted); each must hold a dataset_spec.json (checked by callers)."""
    records = Path(records)
    if not records.is_dir():
        raise SpecError(f"{records}: records folder does not exist")
    return sorted(p for p in records.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_spec(path: str | Path, spec_dict: dict) -> Path:
    """Write a spec dict as Meta-Dataset's converter does (json.dump, indent 2)."""
    path = Path(path)
    path.write_text(json.dumps(spec_dict, indent=2))
    return path
