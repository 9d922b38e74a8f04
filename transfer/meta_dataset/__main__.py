"""`python -m transfer.meta_dataset check --records DIR`: validate converted Meta-Dataset records."""

from __future__ import annotations

import argparse
import sys

from ringbench_common.overrides import comma_list
from transfer.meta_dataset.checker import check_records
from transfer.meta_dataset.records import RecordError
from transfer.meta_dataset.spec import SpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.meta_dataset", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate every source under a records folder")
    group = check.add_mutually_exclusive_group(required=True)
    group.add_argument("--records", help="folder with one sub-folder per source (<source>/dataset_spec.json)")
    group.add_argument("--embedded", action="store_true", help="check the embedded digits source (written if absent)")
    check.add_argument("--sources", default="", help="comma list of source names (default: every folder found)")
    check.add_argument("--quick", action="store_true",
                       help="count records from the framing and read only the first of each class (no full CRC pass)")
    args = parser.parse_args(argv)
    if args.embedded:
        from transfer.meta_dataset.embedded import embedded_records

        records_dir = embedded_records()
    else:
        records_dir = args.records
    sources = list(comma_list(args.sources)) or None
    try:
        reports = check_records(records_dir, sources, full=not args.quick)
    except (SpecError, RecordError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = max(len(r.name) for r in reports)
    for report in reports:
        status = "ok   " if report.ok else "ERROR"
        print(f"{report.name:<{width}}  {status}  {report.message}")
    bad = sum(not r.ok for r in reports)
    if bad:
        print(f"{bad} of {len(reports)} source(s) failed the check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
