"""Dataset fingerprints: which data a cell read, as part of its identity.

A fingerprint is cheap (no image bytes are hashed), independent of where the folder lives (only
names relative to the dataset folder, sizes and annotation/label bytes enter it, so moving or
symlinking the folder keeps it) and changes with anything that changes the numbers:

    COCO          sha256 of each annotation json + the sorted (file name, size) of the images it references
    PASCAL VOC    sha256 of each image set file and of the annotations it lists + the size of each JPEG
    Meta-Dataset  sha256 of dataset_spec.json + the sorted (name, size) of the source's other files
    CIFAR         sha256 of every batch file (labels and pixels live in the same pickles)
    STL-10        sha256 of the label files and class_names.txt + the size of the image files
    ImageFolder   the sorted (relative path, size) of every file under the split folders
    embedded      sha256 of scikit-learn's bundled digits file + the builder's parameters

Fingerprints are cached in $RINGBENCH_CACHE/dataset_fingerprints.json, keyed by the (path, mtime,
size) of the files and folders they were computed from: adding, removing or renaming a file
changes its folder's mtime and so refreshes the fingerprint, while a huge folder (1.28M ImageNet
files) is listed once, not on every run. An image rewritten in place under the same name is not
seen by the cache (nor, if its size is kept, by the fingerprint).

`fingerprint=content` (a key=value option of every suite, bench.plan) hashes every byte instead: the
sha256 of each image and record file replaces its size, and nothing is taken from the cache, so an
edit in place is always seen, at the cost of reading the whole dataset at every plan. Each fingerprint
records its mode ("sizes" or "content"; embedded data is always hashed, so "content"), and the
leaderboard says which mode each dataset got. The two modes give different fingerprints, hence
different cells.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ringbench_common.atomic_files import file_sha256

CACHE_FILE = "dataset_fingerprints.json"
FINGERPRINT_VERSION = 1  # bump when a recipe below changes: every cached and stored fingerprint moves
SIZES, CONTENT = "sizes", "content"
FINGERPRINT_MODES = {SIZES: "file names and sizes (cached by mtime)", CONTENT: "sha256 of every file"}
_MODE: ContextVar[str] = ContextVar("fingerprint_mode", default=SIZES)


@contextmanager
def fingerprint_mode(mode: str) -> Iterator[None]:
    """Fingerprints taken inside use `mode` (SIZES or CONTENT)."""
    if mode not in FINGERPRINT_MODES:
        raise ValueError(f"fingerprint={mode!r}: expected one of {', '.join(FINGERPRINT_MODES)}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def _hashing() -> bool:
    return _MODE.get() == CONTENT


@dataclass(frozen=True)
class DatasetFingerprint:
    """A dataset's short name and the sha256 of what the recipe read (`files`: how many files)."""

    name: str
    sha256: str
    files: int = 0
    mode: str = SIZES  # SIZES or CONTENT: what of each file entered the hash

    @property
    def label(self) -> str:
        """The leaderboard's `dataset` column: short name and the fingerprint's first 8 characters."""
        return f"{self.name}:{self.sha256[:8]}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "files": self.files, "label": self.label, "mode": self.mode}


def _kind(kind: str) -> str:
    """The recipe's name in the digest: CONTENT-mode fingerprints never equal SIZES-mode ones."""
    return f"{kind}:content" if _hashing() else kind


def _digest(name: str, parts: Iterable[Any]) -> str:
    """sha256 over the recipe version, the kind and one canonical JSON line per part."""
    digest = hashlib.sha256(f"ringbench-dataset-v{FINGERPRINT_VERSION}\n{name}\n".encode())
    for part in parts:
        digest.update(json.dumps(part, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------- the cache


def _stat_key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path}|missing"
    return f"{path}|{stat.st_mtime_ns}|{stat.st_size}"


def _cache_path() -> Path:
    from pretrain.embedded import cache_root

    return cache_root() / CACHE_FILE


_MEMORY: dict[str, dict[str, Any]] = {}  # one plan asks for the same folder once per task


def cached(kind: str, watched: Sequence[Path], compute: Callable[[], DatasetFingerprint]) -> DatasetFingerprint:
    """`compute()` unless a fingerprint of `kind` was stored for the same (path, mtime, size) of every
    watched file and folder. A read-only or broken cache only costs a recomputation. In CONTENT mode
    the cache is not read: file times and sizes are what that mode does not trust."""
    from bench.store import atomic_write_json, read_json

    if _hashing():
        return compute()

    key = f"v{FINGERPRINT_VERSION}|{kind}|" + "|".join(_stat_key(Path(p).absolute()) for p in watched)
    key = hashlib.sha256(key.encode()).hexdigest()
    if key in _MEMORY:
        return DatasetFingerprint(**_MEMORY[key])
    path = _cache_path()
    try:
        store = read_json(path)
    except (OSError, ValueError):
        store = {}
    store = store if isinstance(store, dict) else {}
    entry = store.get(key)
    fields = ("name", "sha256", "files", "mode")
    if isinstance(entry, dict) and set(fields[:3]) <= set(entry):
        _MEMORY[key] = {k: entry[k] for k in fields if k in entry}
        return DatasetFingerprint(**_MEMORY[key])
    fingerprint = compute()
    _MEMORY[key] = {k: getattr(fingerprint, k) for k in fields}
    try:  # read again just before writing so concurrent planners lose at most their own entry
        latest = read_json(path)
        store = latest if isinstance(latest, dict) else store
    except (OSError, ValueError):
        pass
    store[key] = _MEMORY[key]
    try:
        atomic_write_json(path, store, fsync=False)
    except OSError:
        pass
    return fingerprint


def _folders_under(root: Path, depth: int) -> list[Path]:
    """`root` and its sub-folders down to `depth` levels: the folders whose mtime moves when a file
    in them is added, removed or renamed."""
    found = [root]
    level = [root]
    for _ in range(depth):
        nxt = []
        for folder in level:
            try:
                nxt += sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=True))
            except OSError:
                continue
        found += nxt
        level = nxt
    return found


# ---------------------------------------------------------------- recipes


def _size_or_hash(path: Path | str, size: int) -> int | str:
    """What of a file enters a fingerprint: its size, or in CONTENT mode its sha256."""
    return file_sha256(path) if _hashing() else size


def _files_with_sizes(root: Path) -> list[tuple[str, int | str]]:
    """Every regular file under `root` (following symlinks) as (POSIX path relative to root, size), sorted;
    in CONTENT mode the file's sha256 stands in place of its size."""
    out: list[tuple[str, int | str]] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_dir(follow_symlinks=True):
                    stack.append((Path(entry.path), name + "/"))
                elif entry.is_file(follow_symlinks=True):
                    out.append((name, _size_or_hash(entry.path, entry.stat(follow_symlinks=True).st_size)))
    out.sort()
    return out


def image_folder_fingerprint(name: str, root: Path, splits: Sequence[str] = ("train", "val")) -> DatasetFingerprint:
    """ImageFolder (<root>/<split>/<class>/<image>): the sorted (relative path, size) of every file."""
    root = Path(root)

    def compute() -> DatasetFingerprint:
        parts: list[Any] = []
        count = 0
        for split in splits:
            files = _files_with_sizes(root / split) if (root / split).is_dir() else []
            parts.append([split, files])
            count += len(files)
        return DatasetFingerprint(name, _digest(_kind(f"imagefolder:{name}"), parts), count, _MODE.get())

    watched = [folder for split in splits for folder in _folders_under(root / split, 1)]
    return cached(f"imagefolder:{name}:{','.join(splits)}", [root, *watched], compute)


def hashed_files_fingerprint(name: str, root: Path, hashed: Sequence[str] | None = None,
                             sized: Sequence[str] = ()) -> DatasetFingerprint:
    """sha256 of the `hashed` files (None: every file directly in `root`) and the size of the `sized` ones."""
    root = Path(root)
    if hashed is None:
        hashed = sorted(e.name for e in os.scandir(root) if e.is_file(follow_symlinks=True))
    hashed, sized = list(hashed), list(sized)

    def compute() -> DatasetFingerprint:
        parts = [["sha256", rel, file_sha256(root / rel) if (root / rel).is_file() else None] for rel in hashed]
        parts += [["size", rel, _size_or_hash(root / rel, (root / rel).stat().st_size) if (root / rel).is_file()
                   else None] for rel in sized]
        return DatasetFingerprint(name, _digest(_kind(f"files:{name}"), parts), len(hashed) + len(sized),
                                  _MODE.get())

    return cached(f"files:{name}:{','.join(hashed)}:{','.join(sized)}", [root, *(root / r for r in hashed + sized)],
                  compute)


def _load_json_bytes(data: bytes) -> Any:
    try:
        import orjson

        return orjson.loads(data)
    except ImportError:  # pragma: no cover - depends on the environment
        return json.loads(data)


def coco_fingerprint(name: str, splits: Sequence[tuple[Path, Path]]) -> DatasetFingerprint:
    """COCO: for each (annotation json, image folder) the json's sha256 and the sorted (file name,
    size) of the images it references (-1 for one that is missing)."""
    splits = [(Path(j), Path(i)) for j, i in splits]

    def compute() -> DatasetFingerprint:
        parts: list[Any] = []
        count = 0
        for json_file, image_root in splits:
            data = json_file.read_bytes()
            names = sorted({str(image.get("file_name")) for image in _load_json_bytes(data).get("images", [])
                            if isinstance(image, dict)})
            sizes = []
            for file_name in names:
                try:
                    sizes.append([file_name, _size_or_hash(image_root / file_name,
                                                           (image_root / file_name).stat().st_size)])
                except OSError:
                    sizes.append([file_name, -1])
            parts.append([json_file.name, hashlib.sha256(data).hexdigest(), image_root.name, sizes])
            count += 1 + len(names)
        return DatasetFingerprint(name, _digest(_kind(f"coco:{name}"), parts), count, _MODE.get())

    watched = [p for j, i in splits for p in (j, i)]
    return cached(f"coco:{name}", watched, compute)


def voc_fingerprint(name: str, splits: Sequence[Any]) -> DatasetFingerprint:
    """PASCAL VOC: for each image set read (objects with `year`, `split`, `root` = the VOC<year> folder) the
    set file's sha256, the sha256 of every annotation it lists and the size of every JPEG (-1: missing)."""
    splits = list(splits)

    def compute() -> DatasetFingerprint:
        parts: list[Any] = []
        count = 0
        for split in splits:
            root = Path(split.root)
            set_file = root / "ImageSets" / "Main" / f"{split.split}.txt"
            data = set_file.read_bytes()
            ids = sorted({line.strip() for line in data.decode().splitlines() if line.strip()})
            annotations = hashlib.sha256()
            sizes = []
            for image_id in ids:
                annotations.update(image_id.encode() + b"\0" + (root / "Annotations" / f"{image_id}.xml").read_bytes())
                try:
                    sizes.append([image_id, (root / "JPEGImages" / f"{image_id}.jpg").stat().st_size])
                except OSError:
                    sizes.append([image_id, -1])
            parts.append([split.year, split.split, hashlib.sha256(data).hexdigest(), annotations.hexdigest(), sizes])
            count += 1 + 2 * len(ids)
        return DatasetFingerprint(name, _digest(f"voc:{name}", parts), count)

    watched = [p for s in splits for p in (Path(s.root) / "ImageSets" / "Main" / f"{s.split}.txt",
                                           Path(s.root) / "Annotations", Path(s.root) / "JPEGImages")]
    return cached(f"voc:{name}", watched, compute)


def meta_dataset_source_fingerprint(source_dir: Path, spec_file: str = "dataset_spec.json") -> DatasetFingerprint:
    """A Meta-Dataset source: sha256 of its spec and the sorted (name, size) of its class files."""
    source_dir = Path(source_dir)

    def compute() -> DatasetFingerprint:
        files = [(rel, size) for rel, size in _files_with_sizes(source_dir) if rel != spec_file]
        parts = [file_sha256(source_dir / spec_file), files]
        return DatasetFingerprint(source_dir.name, _digest(_kind("meta_dataset"), parts), len(files) + 1, _MODE.get())

    return cached("meta_dataset", [source_dir, source_dir / spec_file], compute)


def digits_file() -> Path:
    """scikit-learn's bundled digits (what every embedded dataset is made from)."""
    from importlib import resources

    return Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))


def embedded_fingerprint(name: str, builder: dict[str, Any] | None = None) -> DatasetFingerprint:
    """An embedded dataset: the bundled digits file's sha256 plus the parameters that build it."""
    source = digits_file()

    def compute() -> DatasetFingerprint:
        # always the whole file's hash: the same fingerprint in both modes, so its cells are shared
        return DatasetFingerprint(name, _digest(f"embedded:{name}", [file_sha256(source), builder or {}]), 1, CONTENT)

    fingerprint = cached(f"embedded:{name}:{json.dumps(builder or {}, sort_keys=True)}", [source], compute)
    return replace(fingerprint, mode=CONTENT)  # entries cached before modes existed hold none


# ---------------------------------------------------------------- the standard linear datasets

CIFAR_FILES = {
    "cifar10": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                "batches.meta"],
    "cifar100": ["train", "test", "meta"],
}
STL10_HASHED = ["train_y.bin", "test_y.bin", "class_names.txt"]
STL10_SIZED = ["train_X.bin", "test_X.bin"]


def standard_dataset_fingerprint(name: str, data_root: Path | None) -> DatasetFingerprint:
    """The fingerprint of a dataset pretrain.data reads: digits (embedded), cifar10/100, stl10, imagenet."""
    if name == "digits":
        return embedded_fingerprint("digits", {"split": "pretrain.data stratified 80/20"})
    from pretrain.data import FOLDER

    if data_root is None:
        raise ValueError(f"dataset {name} needs a data root")
    root = Path(data_root)
    folder = root if root.name == FOLDER[name] else root / FOLDER[name]
    if name in CIFAR_FILES:
        return hashed_files_fingerprint(name, folder, CIFAR_FILES[name])
    if name == "stl10":
        return hashed_files_fingerprint(name, folder, STL10_HASHED, STL10_SIZED)
    if name == "imagenet":
        return image_folder_fingerprint(name, folder, ("train", "val"))
    raise ValueError(f"no fingerprint recipe for dataset {name!r}")
