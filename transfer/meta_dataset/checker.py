"""Validation of a records folder: spec, class counts, record counts, CRCs, labels, first images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transfer.meta_dataset import records
from transfer.meta_dataset.spec import SPEC_FILE, SPLITS, SourceSpec, SpecError, find_sources, load_spec


@dataclass
class SourceReport:
    name: str
    path: Path
    ok: bool
    message: str  # summary when ok, the error otherwise


def check_source(source_dir: str | Path, splits: Sequence[str] = SPLITS, full: bool = True) -> SourceSpec:
    """Raise SpecError / RecordError naming the file (and record) of the first problem found.

    full=True reads every record through tf.data (both CRCs checked), requires every label to be
    the class id and decodes the first image of each class; full=False counts records from the
    framing alone (truncation check) and reads and decodes only the first record of each class.
    """
    spec = load_spec(source_dir)
    for split in splits:
        for class_id in spec.classes(split):
            check_class(spec, class_id, full)
    return spec


def check_class(spec: SourceSpec, class_id: int, full: bool) -> int:
    path = spec.class_file(class_id)
    expected = spec.images_per_class[class_id]
    if not path.is_file():
        raise SpecError(f"{spec.path / SPEC_FILE}: class {class_id} ({spec.class_names.get(class_id, '?')}) "
                        f"has {expected} images in the spec but {path} does not exist")
    if full:
        found = records.read_records(path)
        count = len(found)
    else:
        count = len(records.scan_frames(path))
        found = records.read_records(path, [0]) if count else []
    if count != expected:
        raise SpecError(f"{path}: holds {count} records but {spec.path / SPEC_FILE} says images_per_class[{class_id}] = {expected}")
    for index, (_, label) in enumerate(found):
        if label != class_id:
            raise records.RecordError(f"{path}: record {index} has label {label}, expected the class id {class_id}")
    if found:
        records.decode_images([found[0][0]], 8, where=[f"{path} record 0"])
    return count


def check_records(records_dir: str | Path, sources: Sequence[str] | None = None, full: bool = True) -> list[SourceReport]:
    """One report per source folder found (or per name in `sources`)."""
    records_dir = Path(records_dir)
    folders = find_sources(records_dir)
    if sources:
        names = {f.name for f in folders}
        missing = [s for s in sources if s not in names]
        if missing:
            raise SpecError(f"{records_dir}: no source folder(s) {', '.join(missing)}; found {', '.join(sorted(names)) or 'none'}")
        folders = [f for f in folders if f.name in sources]
    if not folders:
        raise SpecError(f"{records_dir}: no source folders (expected <records>/<source>/dataset_spec.json)")
    reports = []
    for folder in folders:
        try:
            spec = check_source(folder, full=full)
            total = sum(spec.images_per_class[c] for s in SPLITS for c in spec.classes(s))
            reports.append(SourceReport(folder.name, folder, True, f"{spec.summary()}, {total} records"))
        except (SpecError, records.RecordError) as error:
            reports.append(SourceReport(folder.name, folder, False, str(error)))
    return reports
