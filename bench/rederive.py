"""Re-derive the intervals, ranks and tests of leaderboard tables already written, from their own columns.

    from bench.rederive import rederive_suite_tables
    rederive_suite_tables(Path("docs/results"), "coco_det")   # rewrites <suite>.csv, _paired.csv, _curves.csv, .md, PNGs

For tables whose cell results are gone (the committed examples under docs/results/), written when every
interval used the normal quantile 1.96. Means, std and n stay as written; what changes is what
bench.intervals now says:
- <suite>.csv: ci95 from std and n (Student's t; the suite's episode convention for one cell's
  episodes); ranks and average ranks again, since ties are decided on those intervals;
- <suite>_paired.csv: each row's sd of the differences recovered from its normal interval
  (sd = ci95 * sqrt(n) / 1.96), then the paired t interval and the p-value of that same test, the
  Holm column, and the columns named for any sampler (tables of that time paired Ring with NCE only);
- <suite>_curves.csv: the same per-cell or over-seed recovery (no std column there);
- <suite>.md and the figures, from the tables above.
Tables written by this version already follow these rules; run it on those and nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import figures
from bench.intervals import (
    EPISODE_CONVENTION,
    NO_INTERVAL,
    NORMAL_QUANTILE,
    STUDENT_T,
    half_width_from_population_std,
    holm,
    paired_t_p,
    t_half_width,
)
from bench.leaderboard import (
    PAIRED_COLUMNS,
    PAIRED_TEST,
    _atomic_text,
    interval_column,
    suite_hooks,
    suite_markdown,
    tied_ranks,
)

OLD_PAIRED_NAMES = {"ring_model": "sampler_model", "nce_model": "baseline_model", "ring_mean": "sampler_mean",
                    "nce_mean": "baseline_mean"}
OLD_NO_INTERVAL = "none (one value)"


def over_seeds(ranked: pd.DataFrame) -> pd.Series:
    """Rows whose interval is the spread of several evaluation seeds (std, n: over the seeds' means)."""
    several = ranked["n_seeds"].astype(int) > 1
    if "deterministic" in ranked:
        several &= ~ranked["deterministic"].astype(bool)
    return several


def ranked_intervals(ranked: pd.DataFrame, sample_interval: str) -> np.ndarray:
    """ci95 of each leaderboard row from its std (population) and n, by the rule of bench.intervals."""
    std, n = ranked["std"].to_numpy(float), ranked["n"].to_numpy(float)
    return np.where(over_seeds(ranked), half_width_from_population_std(std, n, STUDENT_T),
                    half_width_from_population_std(std, n, sample_interval))


def rerank(ranked: pd.DataFrame) -> pd.DataFrame:
    """rank and avg_rank again over the groups rank_table used (the columns this table has)."""
    scope = [k for k in ("suite", "dataset", "setting", "column") if k in ranked]
    entry = "entry" if "entry" in ranked else "model"
    ranked = ranked.copy()
    for _, group in ranked.groupby(scope, sort=False, dropna=False):
        ranked.loc[group.index, "rank"] = tied_ranks(group["mean"].to_numpy(), group["ci95"].to_numpy(),
                                                     bool(group["higher_is_better"].iloc[0]))
    ranked["avg_rank"] = ranked.groupby(["suite", entry], dropna=False)["rank"].transform("mean")
    return ranked


def rederive_ranked(ranked: pd.DataFrame, hooks) -> pd.DataFrame:
    sample_interval = str(getattr(hooks, "sample_interval", STUDENT_T))
    ranked = ranked.assign(ci95=ranked_intervals(ranked, sample_interval))
    if "interval" in ranked:
        ranked["interval"] = ranked["interval"].replace(OLD_NO_INTERVAL, NO_INTERVAL)
    return rerank(ranked)


def rederive_paired(paired: pd.DataFrame) -> pd.DataFrame:
    """The paired table with the t interval of its own test, p from the same (mean, sd, n), and Holm."""
    if paired.empty:
        return pd.DataFrame(columns=[*PAIRED_COLUMNS, "interval"])
    if "p_holm" in paired:  # written under the current rules already
        return paired
    # written when only Ring was paired, only with NCE, and under the normal quantile
    paired = paired.rename(columns=OLD_PAIRED_NAMES).assign(sampler="ring", baseline="nce")
    n = paired["n"].to_numpy(float)
    sd = paired["ci95_diff"].to_numpy(float) * np.sqrt(n) / NORMAL_QUANTILE
    paired["test"] = paired["test"].str.replace("paired t-test; exact sign test", PAIRED_TEST, regex=False)
    paired["ci95_diff"] = t_half_width(sd, n)
    paired["p_ttest"] = paired_t_p(paired["mean_diff"].to_numpy(float), sd, n)
    paired["p_holm"] = holm(paired["p_ttest"].to_numpy(float))
    extra = [c for c in paired.columns if c not in PAIRED_COLUMNS]
    return paired[[*PAIRED_COLUMNS, *extra]]


def rederive_curves(curves: pd.DataFrame, sample_interval: str, old: bool) -> pd.DataFrame:
    """Curve rows: one cell's interval (n = its samples) or the spread of n_seeds seeds (n = seeds)."""
    if curves.empty or not old:
        return curves
    n = curves["n"].to_numpy(float)
    quantile = np.where(curves["n_seeds"].to_numpy() > 1, STUDENT_T, sample_interval)
    std = curves["ci95"].to_numpy(float) * np.sqrt(n) / NORMAL_QUANTILE  # population std behind 1.96 * std / sqrt(n)
    ci95 = np.where(quantile == STUDENT_T, half_width_from_population_std(std, n, STUDENT_T),
                    half_width_from_population_std(std, n, EPISODE_CONVENTION))
    return curves.assign(ci95=ci95)


TEXT_COLUMNS = ("dataset", "setting", "engine", "code_version")  # empty in the CSV: "" as the leaderboard has it


def with_text(table: pd.DataFrame) -> pd.DataFrame:
    present = [c for c in TEXT_COLUMNS if c in table]
    return table.assign(**{c: table[c].astype(object).where(table[c].notna(), "") for c in present})


def rederive_suite_tables(root: Path, suite: str, plot: bool = True) -> list[Path]:
    """Rewrite a suite's written tables (and figures) under the current interval rules; returns the paths."""
    root = Path(root)
    hooks = suite_hooks(suite)
    sample_interval = str(getattr(hooks, "sample_interval", STUDENT_T))
    ranked_path, paired_path, curves_path = (root / f"{suite}{name}.csv" for name in ("", "_paired", "_curves"))
    if not ranked_path.is_file():
        raise FileNotFoundError(f"{ranked_path}: no leaderboard table to re-derive")
    read = {"keep_default_na": False, "na_values": [""]}  # pandas reads floats back exactly as written
    ranked = pd.read_csv(ranked_path, **read)
    old = paired_path.is_file() and "p_holm" not in pd.read_csv(paired_path, nrows=0).columns
    ranked = with_text(ranked)
    ranked = rederive_ranked(ranked, hooks)
    if "interval" not in ranked and hooks is not None:
        ranked["interval"] = interval_column(ranked, hooks)
    paired = pd.read_csv(paired_path, **read) if paired_path.is_file() else pd.DataFrame(columns=PAIRED_COLUMNS)
    paired = with_text(paired)
    paired = rederive_paired(paired)
    curves = pd.read_csv(curves_path, **read) if curves_path.is_file() else pd.DataFrame()
    curves = rederive_curves(curves, sample_interval, old)
    written = []
    for path, table in ((ranked_path, ranked), (paired_path, paired), (curves_path, curves)):
        if path.is_file():
            _atomic_text(path, table.to_csv(index=False))
            written.append(path)
    rows = ranked if "entry" in ranked else ranked.assign(entry=ranked["model"])  # tables from before `entry`
    markdown = suite_markdown(suite, rows, paired, pd.DataFrame(), curves, hooks, [])
    md_path = root / f"{suite}.md"
    _atomic_text(md_path, markdown)
    written.append(md_path)
    if plot:
        written += figures.redraw(root, suite)
    return written
