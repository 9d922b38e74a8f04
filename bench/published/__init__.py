"""Published reference rows: numbers from the literature shown beside measured results, never mixed into them.

One CSV per suite (`<suite>.csv` here): a `model` and `task` column, one column per metric, an optional
`trials` column and a `source` column citing where each row comes from. A suite returns them from
`Suite.published_rows()`; the leaderboard prints them in their own table, marked published.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

REQUIRED = ("model", "task", "source")


def read_published(path: str | Path) -> pd.DataFrame:
    """The rows of one published-results file; every row must name its source and give numbers."""
    path = Path(path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no published rows")
    missing = [column for column in REQUIRED if column not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    metrics = [column for column in rows[0] if column not in (*REQUIRED, "trials")]
    for number, row in enumerate(rows, 2):
        if not row["source"].strip():
            raise ValueError(f"{path}:{number}: row {row['model']!r} has no source")
        for metric in metrics:
            try:
                float(row[metric])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{number}: {metric}={row[metric]!r} is not a number") from None
    frame = pd.DataFrame(rows)
    frame[metrics] = frame[metrics].astype(float)
    frame.attrs["metrics"] = metrics
    return frame


def published_markdown(rows: pd.DataFrame | None) -> str:
    """A markdown section with the published rows (empty text when there are none)."""
    if rows is None or rows.empty:
        return ""
    metrics = rows.attrs.get("metrics") or [c for c in rows.columns if c not in (*REQUIRED, "trials")]
    lines = ["\n## Published reference rows (cited, not measured here)\n",
             "Numbers as their source reports them, for comparison with the measured rows above; they are not "
             "ranked and no interval is known here.\n",
             "| model | task | " + " | ".join(metrics) + " | trials | source |",
             "|---|---|" + "---|" * len(metrics) + "---|---|"]
    for row in rows.to_dict("records"):
        values = " | ".join(f"{row[m]:.1f}" for m in metrics)
        lines.append(f"| {row['model']} (published) | {row['task']} | {values} | {row.get('trials', '') or '-'} | {row['source']} |")
    return "\n".join(lines) + "\n"
