"""Leaderboards from stored result.json files only (never from live jobs or logs).

    python -m bench.leaderboard [--results DIR] [--suite NAME ...]

Writes, per suite, under the results folder:
    <suite>.csv         the tidy leaderboard: one row per (model, task, metric, dataset, setting), with
                        rank and avg_rank; `dataset` names the data (short name:fingerprint), `setting`
                        the options that differ from the suite's defaults (e.g. temperature=0.5)
    <suite>.md          the same as a readable table (mean +- ci95 (rank)), paired deltas of each
                        hard-negative sampler against its NCE twin, missing and failed cells
    <suite>.png         headline metrics: means with 95% intervals per task, one colour per checkpoint
    <suite>_paired.csv  each hard-negative checkpoint (ring, ball, dcl, hcl, mochi: the registry's samplers
                        with a `baseline`) against its twin with that baseline sampler, on the same samples
    <suite>_paired.png  sampler - baseline per task and headline metric with 95% intervals (bench.figures)
    <suite>_curves.csv  metric vs pretraining epoch when a model family has results at several epochs,
    <suite>_curves.png  and its figure (bench.figures)
Encoders snapshotted before the end of their run (metadata epoch < epochs) feed the curves only; the
ranking and the twins compare final encoders. The Markdown shows the headline metrics; the CSV all.
and long.csv: every stored metric of every suite (one row per cell x metric).
Intervals and tests (Student's t over few runs, Meta-Dataset's episode convention, one verdict per
comparison, Holm): bench.intervals and docs/statistics.md.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.intervals import (
    NO_INTERVAL,
    STUDENT_T,
    half_width_from_population_std,
    holm,
    paired_t_p,
    sign_test_p,
    t_half_width,
)
from bench.store import RESULT, CorruptResult, ResultStore, read_json, suites_in, validate_result

MODEL_KEYS = ["method", "sampler", "pretrain_dataset", "epochs", "ckpt_seed", "arch"]
# What a row of the leaderboard is: one model on one task, metric, dataset and setting. `identity`
# hashes everything of the cell id but the checkpoint and the seed (task params, options, protocol,
# dataset fingerprint), so two settings that print alike are still never averaged together.
SETTING_KEYS = ["dataset", "setting", "identity"]
LONG_COLUMNS = [
    "suite", "task", "metric", "model", "method", "sampler", "sampler_params", "pretrain_dataset", "epochs",
    "ckpt_seed", "arch", "checkpoint_sha256", "checkpoint_path", "dataset", "setting", "identity", "seed", "mean",
    "std", "n", "ci95", "higher_is_better", "engine", "code_version", "protocol_version", "cell_id", "epoch", "w_out",
]


@dataclass
class Scan:
    rows: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[tuple[str, str], tuple[list[str] | None, list[float] | None]] = field(default_factory=dict)
    corrupt: list[str] = field(default_factory=list)  # messages naming file and problem
    failed: list[dict[str, Any]] = field(default_factory=list)  # cells with an error and no result
    pending: list[str] = field(default_factory=list)
    sample_interval: str = STUDENT_T  # the suite's quantile for a mean over one cell's samples
    fingerprint_modes: dict[str, str] = field(default_factory=dict)  # dataset label -> how it was fingerprinted


def model_label(checkpoint: dict[str, Any] | None) -> str:
    if not checkpoint:
        return "-"
    sha = str(checkpoint.get("sha256") or "")[:8]
    return (f"{checkpoint.get('method')}/{checkpoint.get('sampler')} {checkpoint.get('pretrain_dataset')} "
            f"e{checkpoint.get('epochs')} s{checkpoint.get('seed')} {sha}")


try:  # orjson parses the per-sample arrays several times faster; the standard library works too
    import orjson

    _parse = orjson.loads

    def _dumps_sorted(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    _PARSE_ERRORS: tuple[type[BaseException], ...] = (orjson.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError)
except ImportError:  # pragma: no cover - depends on the environment
    _parse = json.loads
    _dumps_sorted = None
    _PARSE_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)


def _load(path: str) -> dict[str, Any]:
    """A validated result; FileNotFoundError when there is none, CorruptResult for anything unreadable."""
    try:
        with open(path, "rb") as handle:
            result = _parse(handle.read())
    except FileNotFoundError:
        raise
    except OSError as error:  # a directory, no permission, an I/O error: the result cannot be used
        raise CorruptResult(f"{path}: cannot be read ({error.strerror or error})") from None
    except _PARSE_ERRORS as error:
        raise CorruptResult(f"{path}: not valid JSON ({error})") from None
    return validate_result(result, path)


@dataclass(frozen=True)
class SuiteDefaults:
    """What `setting` is measured against: the suite's default options, and the options naming data
    folders (their data is the `dataset` column, not a setting)."""

    options: dict[str, Any] = field(default_factory=dict)
    path_options: tuple[str, ...] = ()
    neutral: dict[str, Any] = field(default_factory=dict)  # Suite.identity_neutral_defaults
    sample_interval: str = STUDENT_T  # Suite.sample_interval

    @classmethod
    def of(cls, suite: str) -> SuiteDefaults:
        hooks = suite_hooks(suite)
        if hooks is None:
            return cls()
        return cls(dict(hooks.options), tuple(getattr(hooks, "path_options", ())),
                   dict(getattr(hooks, "identity_neutral_defaults", {})),
                   str(getattr(hooks, "sample_interval", STUDENT_T)))


def _option_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def setting_of(options: dict[str, Any] | None, defaults: SuiteDefaults) -> str:
    """The options that differ from the suite's defaults, as `key=value` in key order ("" for none)."""
    if not options:
        return ""
    parts = []
    for key in sorted(options):
        if key in defaults.path_options:
            continue
        value = options[key]
        if key in defaults.options and _option_text(value) == _option_text(defaults.options[key]):
            continue
        parts.append(f"{key}={_option_text(value)}")
    return " ".join(parts)


def identity_of(result: dict[str, Any], defaults: SuiteDefaults) -> str:
    from bench.suite import identity_options

    options = identity_options(result.get("options") or {}, defaults.path_options, defaults.neutral)
    dataset = result.get("dataset") or {}
    identity = [result["task"].get("params") or {}, options, result.get("protocol_version"), dataset.get("sha256")]
    return hashlib.sha256(_canonical(identity)).hexdigest()[:12]


def _canonical(value: Any) -> bytes:
    if _dumps_sorted is not None:
        try:
            return _dumps_sorted(value)
        except TypeError:  # a value orjson does not serialise: the standard library's str() fallback
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def without_cyclic_gc(function):
    """Run `function` with Python's cyclic garbage collector paused: a scan holds millions of parsed
    per-sample floats, and every automatic collection would walk them all again (a third of the build
    time at 10,000 cells). Nothing built here forms cycles that need collecting before the end."""

    @functools.wraps(function)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused


def _checkpoint_columns(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model_label(checkpoint),
        "method": checkpoint.get("method"),
        "sampler": checkpoint.get("sampler"),
        "sampler_params": json.dumps(checkpoint.get("sampler_params"), sort_keys=True) if checkpoint else None,
        "pretrain_dataset": checkpoint.get("pretrain_dataset"),
        "epochs": checkpoint.get("epochs"),
        "ckpt_seed": checkpoint.get("seed"),
        "arch": checkpoint.get("arch"),
        "checkpoint_sha256": checkpoint.get("sha256"),
        "checkpoint_path": checkpoint.get("path"),
        "epoch": checkpoint.get("epoch"),  # a snapshot's place on its run (None before snapshots)
        "w_out": checkpoint.get("w_out"),
    }


@without_cyclic_gc
def scan_suite(root: Path, suite: str) -> Scan:
    """Read every cell folder of a suite: results become rows; corrupt, failed and pending are listed."""
    scan = Scan()
    store = ResultStore(root, suite)
    if not store.cells_dir.is_dir():
        return scan
    defaults = SuiteDefaults.of(suite)
    scan.sample_interval = defaults.sample_interval
    per_checkpoint: dict[bytes, dict[str, Any]] = {}
    per_setting: dict[bytes, dict[str, Any]] = {}
    for entry in os.scandir(store.cells_dir):
        if not entry.is_dir():
            continue
        result_path = os.path.join(entry.path, RESULT)
        try:
            result = _load(result_path)
        except FileNotFoundError:
            error_path = os.path.join(entry.path, "error.json")
            try:
                error = read_json(error_path)
                scan.failed.append({"cell_id": entry.name, "message": str(error.get("message", "")).splitlines()[0:1]})
            except (OSError, ValueError):
                scan.pending.append(entry.name)
            continue
        except CorruptResult as error:
            scan.corrupt.append(str(error))
            continue
        checkpoint = result.get("checkpoint") or {}
        # cells share checkpoints and settings: derive their columns once per distinct value
        checkpoint_key = _canonical(checkpoint)
        checkpoint_columns = per_checkpoint.get(checkpoint_key)
        if checkpoint_columns is None:
            checkpoint_columns = per_checkpoint[checkpoint_key] = _checkpoint_columns(checkpoint)
        setting_key = _canonical([result.get("options"), result["task"].get("params"), result.get("protocol_version"),
                                  result.get("dataset")])
        setting_columns = per_setting.get(setting_key)
        if setting_columns is None:
            if result.get("dataset"):  # results stored before modes existed were fingerprinted by sizes
                scan.fingerprint_modes[result["dataset"].get("label") or ""] = result["dataset"].get("mode", "sizes")
            setting_columns = per_setting[setting_key] = {
                "dataset": (result.get("dataset") or {}).get("label") or "",
                "setting": setting_of(result.get("options"), defaults),
                "identity": identity_of(result, defaults)}
        task = result["task"]["name"]
        for metric_name, metric in result["metrics"].items():
            scan.rows.append({
                "suite": result["suite"],
                "task": task,
                "metric": metric_name,
                **checkpoint_columns,
                # suites without checkpoints (pretrain, estimators) compare their tasks with each other
                "model": checkpoint_columns["model"] if checkpoint else task,
                **setting_columns,
                "seed": result["seed"],
                "mean": float(metric["mean"]),
                "std": float(metric.get("std") or 0.0),
                "n": int(metric.get("n") or 1),
                "ci95": float(metric.get("ci95") or 0.0),
                "higher_is_better": bool(metric.get("higher_is_better", True)),
                "engine": result.get("engine"),
                "code_version": result.get("code_version"),
                "protocol_version": result.get("protocol_version"),
                "cell_id": result["cell_id"],
            })
            scan.samples[(result["cell_id"], metric_name)] = (metric.get("sample_ids"), metric.get("samples"))
    return scan


def long_table(scan: Scan) -> pd.DataFrame:
    """One row per cell and metric; `ci95` is derived here from the stored std and n (Student's t, or
    the suite's episode convention), so cells written under an older rule read the same as new ones."""
    long = pd.DataFrame(scan.rows, columns=LONG_COLUMNS)
    if not long.empty:
        long["ci95"] = half_width_from_population_std(long["std"].to_numpy(float), long["n"].to_numpy(float),
                                                      scan.sample_interval)
    return long


AGGREGATE_COLUMNS = ["mean", "std", "n", "ci95", "n_seeds", "deterministic", "higher_is_better", "engine",
                     "code_version"]


def aggregate(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, model, task, metric, dataset, setting): only cells that differ in their
    evaluation seed alone are averaged, their spread giving the Student-t interval (std stays the
    seeds' population std); a single seed keeps its per-sample mean, std, n and ci95. Seeds that all gave the very same number (a deterministic
    evaluation such as kNN) are reported once, with the per-sample interval, and `deterministic`."""
    keys = ["suite", "model", "task", "metric", *SETTING_KEYS]
    if long.empty:
        return pd.DataFrame(columns=keys + MODEL_KEYS + AGGREGATE_COLUMNS)
    long = long.drop_duplicates(subset=[*keys, "seed"])  # one value per distinct seed
    grouped = long.groupby(keys, sort=True, dropna=False)
    first = grouped.first()
    count = grouped["mean"].count()
    seed_mean = grouped["mean"].mean()
    seed_std = grouped["mean"].std(ddof=0).fillna(0.0)
    spread = grouped["mean"].max() - grouped["mean"].min()
    deterministic = (count > 1) & (spread == 0)
    single = (count == 1) | deterministic
    out = first[MODEL_KEYS].copy()
    out["mean"] = np.where(single, first["mean"], seed_mean)
    out["std"] = np.where(single, first["std"], seed_std)
    out["n"] = np.where(single, first["n"], count).astype(int)
    out["ci95"] = np.where(single, first["ci95"], half_width_from_population_std(seed_std, count))
    out["n_seeds"] = count.astype(int)
    out["deterministic"] = deterministic.astype(bool)
    out["higher_is_better"] = first["higher_is_better"].astype(bool)
    out["engine"] = _joined_per_group(long, keys, "engine", first.index)  # which engine produced the number (coco_det)
    out["code_version"] = _joined_per_group(long, keys, "code_version", first.index)
    out = out.reset_index()
    # two identities that print the same setting (e.g. engine=auto resolved differently): tell them apart
    clash = out.groupby(["suite", "model", "task", "metric", "dataset", "setting"], dropna=False)["identity"].transform("nunique") > 1
    if clash.any():
        out.loc[clash, "setting"] = (out.loc[clash, "setting"] + " #" + out.loc[clash, "identity"].str[:6]).str.strip()
    return out


def _joined(values: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in values if v is not None and v == v and v != ""}))


def _joined_per_group(long: pd.DataFrame, keys: list[str], column: str, groups: pd.Index) -> np.ndarray:
    """_joined of `column` for each of `groups` (the groups of `keys`, in order); groups with one distinct
    value (nearly all) take it without a Python call per group."""
    present = long[keys + [column]].dropna(subset=[column])
    present = present[present[column].astype(str) != ""].drop_duplicates()
    grouped = present.groupby(keys, sort=True, dropna=False)[column]
    joined = grouped.first().astype(str)
    several = grouped.size() > 1
    if several.any():
        joined[several] = present.set_index(keys).loc[several[several].index, column].groupby(
            level=list(range(len(keys))), dropna=False).agg(_joined)
    return joined.reindex(groups).fillna("").to_numpy()


def tied_ranks(means: np.ndarray, ci95: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Meta-Dataset-style ranks: take the best remaining model; every remaining model whose difference
    from it is within the 95% interval of that difference (sqrt(ci_a^2 + ci_b^2)) ties with it; the
    tied group shares the average of the rank positions it occupies; repeat with the rest. A value
    without an interval (n = 1, NaN) adds no width of its own."""
    means = np.asarray(means, dtype=float)
    ci95 = np.nan_to_num(np.asarray(ci95, dtype=float), nan=0.0)
    ranks = np.full(len(means), np.nan)
    remaining = [i for i in range(len(means)) if np.isfinite(means[i])]
    position = 1
    while remaining:
        values = means[remaining] if higher_is_better else -means[remaining]
        best = remaining[int(np.argmax(values))]
        group = [i for i in remaining
                 if abs(means[i] - means[best]) <= math.sqrt(ci95[i] ** 2 + ci95[best] ** 2)]
        ranks[group] = position + (len(group) - 1) / 2.0
        position += len(group)
        remaining = [i for i in remaining if i not in group]
    return ranks


RANKED_COLUMNS = ["suite", "model", "task", "metric", "dataset", "setting", "column", "entry", *MODEL_KEYS, "mean",
                  "std", "n", "ci95", "n_seeds", "deterministic", "higher_is_better", "rank", "avg_rank", "engine",
                  "code_version"]


def rank_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` per (suite, dataset, setting, column) and `avg_rank` per (suite, entry): the headline
    column. Models are ranked only against models evaluated on the same data with the same setting.

    `column` is "task metric" when models are checkpoints; in a suite without checkpoints the models
    are its tasks (e.g. pretraining recipes), compared per metric. `entry` names a table row: the
    model, its setting when not the default, and its dataset when one task was evaluated on several
    (two COCO folders); a suite whose tasks are datasets (Meta-Dataset sources) keeps one row per model."""
    if agg.empty:
        return pd.DataFrame(columns=RANKED_COLUMNS)
    agg = agg.copy()
    checkpointless = agg["model"] == agg["task"]
    agg["column"] = np.where(checkpointless, agg["metric"], agg["task"] + " " + agg["metric"])
    entry = agg["model"].astype(str)
    with_setting = agg["setting"] != ""
    entry = entry.where(~with_setting, entry + " [" + agg["setting"] + "]")
    several = agg.groupby(["suite", "task"])["dataset"].transform("nunique") > 1
    agg["entry"] = entry.where(~several, entry + " @ " + agg["dataset"])
    scope = ["suite", "dataset", "setting"]
    parts = []
    for _, group in agg.groupby([*scope, "column"], sort=True, dropna=False):
        group = group.copy()
        group["rank"] = tied_ranks(group["mean"].to_numpy(), group["ci95"].to_numpy(),
                                   bool(group["higher_is_better"].iloc[0]))
        parts.append(group)
    ranked = pd.concat(parts, ignore_index=True)
    ranked["avg_rank"] = ranked.groupby(["suite", "entry"], dropna=False)["rank"].transform("mean")
    return ranked.sort_values(["suite", "setting", "avg_rank", "entry", "task", "metric"],
                              ignore_index=True)[RANKED_COLUMNS]


PAIRED_COLUMNS = ["suite", "task", "metric", "dataset", "setting", "seed", "sampler", "baseline", "sampler_model",
                  "baseline_model", "method", "pretrain_dataset", "epochs", "ckpt_seed", "arch", "n", "sampler_mean",
                  "baseline_mean", "mean_diff", "ci95_diff", "p_ttest", "p_holm", "p_sign", "test"]
# Twins: a hard-negative checkpoint and its baseline-sampler checkpoint of the same pretraining recipe
# (method, data, epochs, arch) and pretraining seed (`ckpt_seed`, the checkpoint metadata's seed),
# evaluated on the same data with the same setting.
TWIN_KEYS = ["suite", "task", "metric", "dataset", "setting", "identity", "method", "pretrain_dataset", "epochs",
             "arch", "ckpt_seed"]
PAIRED_TEST = "paired t-test (its t interval); exact sign test; Holm over the table"


def sampler_baselines(samplers: Iterable[Any]) -> dict[str, str]:
    """{sampler: the sampler its twin uses} for the registered samplers among `samplers` that declare a
    baseline twin (NegativeSampler.baseline_twin); names the registry does not know (random/none) pair with
    nothing."""
    from pretrain.sampler_twins import BASELINE_TWINS  # the registry's twins, without importing torch

    names = {str(s) for s in samplers if isinstance(s, str) and s}
    return {name: BASELINE_TWINS[name] for name in sorted(names) if BASELINE_TWINS.get(name)}


def _aligned(ids_r, values_r, ids_n, values_n) -> tuple[np.ndarray, np.ndarray]:
    """The samples both cells evaluated, in the same order (a fast path when the id lists are equal)."""
    if ids_r == ids_n:
        return np.asarray(values_r, dtype=float), np.asarray(values_n, dtype=float)
    lookup = dict(zip(ids_n, values_n))
    pairs = [(v, lookup[i]) for i, v in zip(ids_r, values_r) if i in lookup]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    hard, base = zip(*pairs)
    return np.asarray(hard, dtype=float), np.asarray(base, dtype=float)


def _twin_cells(long: pd.DataFrame) -> pd.DataFrame:
    """Every (hard-negative cell, baseline cell) pair of twins, with `sampler` and `baseline` named."""
    twin_keys = [*TWIN_KEYS, "seed"]
    # nothing to pair unless some evaluation has two samplers
    if not (long.groupby(twin_keys, dropna=False)["sampler"].nunique() > 1).any():
        return pd.DataFrame()
    merged = []
    for sampler, baseline in sampler_baselines(long["sampler"].dropna().unique()).items():
        hard, base = long[long["sampler"] == sampler], long[long["sampler"] == baseline]
        if not hard.empty and not base.empty:
            merged.append(hard.merge(base, on=twin_keys, suffixes=("_sampler", "_baseline")))
    if not merged:
        return pd.DataFrame()
    return pd.concat(merged, ignore_index=True).rename(columns={"sampler_sampler": "sampler",
                                                                "sampler_baseline": "baseline"})


def paired_comparisons(long: pd.DataFrame, samples: dict) -> pd.DataFrame:
    """Each hard-negative checkpoint against its baseline twin (same method, data, epochs, arch, seed),
    per task, metric and evaluation seed, on the samples both evaluated (matching sample_ids).

    mean_diff = mean(sampler - baseline); ci95_diff = t(0.975, n - 1) * sd(diff, ddof=1) / sqrt(n), the
    interval of the same paired t-test that gives p_ttest, so it excludes 0 exactly when p_ttest < 0.05;
    p_sign is the two-sided exact sign test (ties dropped). Positive diffs favour the hard-negative
    sampler when higher is better. p_holm is added by `with_pretraining_seed_rows`, over the whole table."""
    if long.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    twin_keys = [*TWIN_KEYS, "seed"]
    merged = _twin_cells(long)
    if merged.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    rows, hard_values, base_values = [], [], []
    unpaired: dict[str, int] = {}  # metric -> twin pairs without a paired statistic (said under the table)
    keys = zip(merged["cell_id_sampler"].tolist(), merged["cell_id_baseline"].tolist(), merged["metric"].tolist())
    for row, (hard_id, base_id, metric) in enumerate(keys):
        ids_r, values_r = samples.get((hard_id, metric), (None, None))
        ids_n, values_n = samples.get((base_id, metric), (None, None))
        if not values_r or not values_n or ids_r is None or ids_n is None:
            unpaired[metric] = unpaired.get(metric, 0) + 1  # means only: the leaderboard still shows both
            continue
        if ids_r == ids_n:  # the usual case: both evaluated the same samples in the same order
            a, b = values_r, values_n
        else:
            a, b = _aligned(ids_r, values_r, ids_n, values_n)
            if len(a) == 0:
                unpaired[metric] = unpaired.get(metric, 0) + 1  # no sample in common
                continue
        rows.append(row)
        hard_values.append(a)
        base_values.append(b)
    if not rows:
        empty = pd.DataFrame(columns=PAIRED_COLUMNS)
        empty.attrs["unpaired"] = unpaired
        return empty
    # statistics for all pairs at once, one matrix per sample count
    count = np.array([len(a) for a in hard_values])
    stats_out = {key: np.zeros(len(rows)) for key in ("hard", "base", "mean", "sd", "positive", "nonzero")}
    for n in np.unique(count):
        index = np.flatnonzero(count == n)
        hard = np.array([hard_values[i] for i in index], dtype=float)
        base = np.array([base_values[i] for i in index], dtype=float)
        diff = hard - base
        stats_out["hard"][index] = hard.mean(axis=1)
        stats_out["base"][index] = base.mean(axis=1)
        stats_out["mean"][index] = diff.mean(axis=1)
        stats_out["sd"][index] = diff.std(axis=1, ddof=1) if n > 1 else 0.0
        stats_out["positive"][index] = (diff > 0).sum(axis=1)
        stats_out["nonzero"][index] = (diff != 0).sum(axis=1)
    table = merged.iloc[rows][twin_keys + ["sampler", "baseline", "model_sampler", "model_baseline"]].reset_index(
        drop=True).rename(columns={"model_sampler": "sampler_model", "model_baseline": "baseline_model"})
    table["n"] = count
    table["sampler_mean"], table["baseline_mean"] = stats_out["hard"], stats_out["base"]
    table["mean_diff"] = stats_out["mean"]
    table["ci95_diff"] = t_half_width(stats_out["sd"], count)
    table["p_ttest"] = paired_t_p(stats_out["mean"], stats_out["sd"], count)
    table["p_holm"] = np.nan
    table["p_sign"] = sign_test_p(stats_out["positive"].astype(int), stats_out["nonzero"].astype(int))
    table["test"] = PAIRED_TEST
    table = collapse_deterministic(table[[*PAIRED_COLUMNS, "identity"]])
    if table["seed"].nunique() > 1:
        table = pd.concat([table, paired_over_seeds(table)], ignore_index=True)
    # per task and metric: seeds in order, then the row over seeds
    order = table["seed"].map(lambda seed: (1, 0) if seed == "all" else (0, int(str(seed).split(",")[0])))
    table = table.assign(_order=order).sort_values(["suite", "task", "metric", "dataset", "setting", "sampler_model",
                                                    "_order"], kind="stable",
                                                   ignore_index=True).drop(columns=["_order", "identity"])
    table.attrs["unpaired"] = unpaired
    return table


def unpaired_notes(unpaired: dict[str, int]) -> list[str]:
    """The Markdown lines naming the metrics whose twins got no paired row (stored as means only)."""
    if not unpaired:
        return []
    listed = ", ".join(f"`{metric}` ({count})" for metric, count in sorted(unpaired.items()))
    return [f"- twin pairs with no paired statistic, by metric: {listed}; stored as means without per-sample "
            "values (or with no sample in common), so only the leaderboard above compares them"]


PAIR_KEYS = ["suite", "task", "metric", "dataset", "setting", "identity", "sampler", "baseline", "sampler_model",
             "baseline_model", "method", "pretrain_dataset", "epochs", "ckpt_seed", "arch"]


def collapse_deterministic(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Twins that gave the very same pair of numbers under every evaluation seed (a deterministic
    evaluation) are one comparison, not several: keep one row, its seed column listing the seeds."""
    if per_seed.empty:
        return per_seed
    values = ["sampler_mean", "baseline_mean", "mean_diff", "ci95_diff"]
    grouped = per_seed.groupby(PAIR_KEYS, sort=False, dropna=False)
    same = (grouped[values].transform("nunique", dropna=False) <= 1).all(axis=1) & (grouped["seed"].transform("size") > 1)
    if not same.any():
        return per_seed
    repeated = per_seed[same]
    seeds = repeated.groupby(PAIR_KEYS, sort=False, dropna=False)["seed"].transform(
        lambda s: ",".join(str(v) for v in sorted(s, key=int)))
    once = repeated.assign(seed=seeds, test=repeated["test"] + "; identical under every seed (deterministic)")
    once = once.drop_duplicates(subset=PAIR_KEYS)
    return pd.concat([per_seed[~same], once], ignore_index=True)


def paired_over_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Rows with seed "all": the twins compared over evaluation seeds, each seed's mean being one paired
    sample (n = seeds), for twins evaluated under two or more common seeds."""
    columns = [*PAIRED_COLUMNS, "identity"]
    diff = per_seed["sampler_mean"].astype(float) - per_seed["baseline_mean"].astype(float)
    frame = per_seed[PAIR_KEYS].assign(sampler_mean=per_seed["sampler_mean"].astype(float),
                                       baseline_mean=per_seed["baseline_mean"].astype(float), diff=diff,
                                       positive=(diff > 0).astype(int), nonzero=(diff != 0).astype(int))
    over = frame.groupby(PAIR_KEYS, sort=False, dropna=False).agg(
        n=("diff", "size"), sampler_mean=("sampler_mean", "mean"), baseline_mean=("baseline_mean", "mean"),
        mean_diff=("diff", "mean"), sd=("diff", "std"), positive=("positive", "sum"), nonzero=("nonzero", "sum"))
    over = over[over["n"] >= 2].reset_index()
    if over.empty:
        return pd.DataFrame(columns=columns)
    n = over["n"].to_numpy()
    over["ci95_diff"] = t_half_width(over["sd"].to_numpy(), n)
    over["p_ttest"] = paired_t_p(over["mean_diff"].to_numpy(), over["sd"].to_numpy(), n)
    over["p_holm"] = np.nan
    over["p_sign"] = sign_test_p(over["positive"].to_numpy(), over["nonzero"].to_numpy())
    over["seed"] = "all"
    over["test"] = "over seeds (samples: per-seed means); " + PAIRED_TEST
    return over[columns]


DETERMINISTIC_NOTE = ("† the same number under every evaluation seed (a deterministic evaluation): reported "
                      "once; its interval covers the test samples, not seeds.")


def suite_units(hooks: Any) -> tuple[str, str]:
    """(what one sample is, what an evaluation seed is) for a suite, e.g. ("episodes", "evaluation seeds")."""
    return (str(getattr(hooks, "sample_unit", "samples")), str(getattr(hooks, "seed_unit", "evaluation seeds")))


def interval_column(frame: pd.DataFrame, hooks: Any) -> pd.Series:
    """What each row's 95% interval covers: the suite's samples (one evaluation), its evaluation seeds
    (several averaged) or nothing (a single value)."""
    sample_unit, seed_unit = suite_units(hooks)
    if frame.empty:
        return pd.Series(dtype=str)
    over_seeds = frame["n_seeds"] > 1
    if "deterministic" in frame:  # the same number under every seed: reported once, samples' interval
        over_seeds &= ~frame["deterministic"].astype(bool)
    return pd.Series(np.where(over_seeds, seed_unit, np.where(frame["n"] > 1, sample_unit, NO_INTERVAL)),
                     index=frame.index)


PRETRAIN_SEED_KEYS = ["suite", "task", "metric", "dataset", "setting", "method", "sampler", "pretrain_dataset",
                      "epochs", "arch"]
PRETRAIN_SEED_COLUMNS = [*PRETRAIN_SEED_KEYS, "model", "ckpt_seeds", "n", "mean", "sd", "ci95", "interval"]


def family_label(row: dict[str, Any], seeds: list, sampler: str | None = None) -> str:
    seeds_text = ",".join(str(s) for s in seeds)
    return (f"{row['method']}/{sampler or row['sampler']} {row['pretrain_dataset']} e{row['epochs']} "
            f"(pretraining seeds {seeds_text})")


def over_pretraining_seeds(ranked: pd.DataFrame) -> pd.DataFrame:
    """Per (method, sampler, data, epochs, arch) trained with two or more pretraining seeds: the mean over
    those seeds' checkpoints (each one's mean is one sample) and t(0.975, seeds - 1) * sd(ddof=1) / sqrt(seeds)."""
    if ranked.empty or "ckpt_seed" not in ranked:
        return pd.DataFrame(columns=PRETRAIN_SEED_COLUMNS)
    usable = ranked[ranked["ckpt_seed"].notna() & ranked["method"].notna()]
    if usable.empty:
        return pd.DataFrame(columns=PRETRAIN_SEED_COLUMNS)
    usable = usable.drop_duplicates([*PRETRAIN_SEED_KEYS, "ckpt_seed"])  # one checkpoint per pretraining seed
    usable = usable[usable.groupby(PRETRAIN_SEED_KEYS, dropna=False)["ckpt_seed"].transform("size") >= 2]
    if usable.empty:
        return pd.DataFrame(columns=PRETRAIN_SEED_COLUMNS)
    # vectorised over families: a loop per family cost a tenth of the 10,000-cell build
    over = usable.groupby(PRETRAIN_SEED_KEYS, sort=True, dropna=False).agg(
        n=("mean", "size"), mean=("mean", "mean"), sd=("mean", "std"),
        seeds=("ckpt_seed", lambda s: sorted(s.tolist()))).reset_index()
    over["ci95"] = t_half_width(over["sd"].to_numpy(float), over["n"].to_numpy())
    over["model"] = [family_label(r, r["seeds"]) for r in over.to_dict("records")]
    over["ckpt_seeds"] = [",".join(map(str, seeds)) for seeds in over["seeds"]]
    over["interval"] = "pretraining seeds"
    return over.reindex(columns=PRETRAIN_SEED_COLUMNS)


def paired_over_pretraining_seeds(paired: pd.DataFrame) -> pd.DataFrame:
    """Rows with ckpt_seed "all": twins over pretraining seeds, each seed's paired mean difference
    being one sample (n = pretraining seeds), per evaluation seed (or over them: seed "all")."""
    keys = [k for k in ("suite", "task", "metric", "dataset", "setting", "identity", "seed", "sampler", "baseline",
                        "method", "pretrain_dataset", "epochs", "arch") if k in paired]
    several = paired.groupby(keys, dropna=False)["ckpt_seed"].transform("nunique") >= 2
    per_seed = paired[several].drop_duplicates(keys + ["ckpt_seed"])
    if per_seed.empty:
        return pd.DataFrame(columns=list(paired.columns))
    per_seed = per_seed.assign(positive=per_seed["mean_diff"] > 0, nonzero=per_seed["mean_diff"] != 0)
    # vectorised over groups: a loop per group cost seconds on 10,000 cells
    over = per_seed.groupby(keys, sort=False, dropna=False).agg(
        n=("mean_diff", "size"), mean_diff=("mean_diff", "mean"), sd=("mean_diff", "std"),
        sampler_mean=("sampler_mean", "mean"), baseline_mean=("baseline_mean", "mean"), positive=("positive", "sum"),
        nonzero=("nonzero", "sum"), seeds=("ckpt_seed", lambda s: sorted(s.tolist()))).reset_index()
    n, sd = over["n"].to_numpy(), over["sd"].to_numpy(float)
    over["ci95_diff"] = t_half_width(sd, n)
    over["p_ttest"] = paired_t_p(over["mean_diff"].to_numpy(float), sd, n)
    over["p_sign"] = sign_test_p(over["positive"].to_numpy(), over["nonzero"].to_numpy())
    over["ckpt_seed"] = "all"
    records = over.to_dict("records")
    over["sampler_model"] = [family_label(r, r["seeds"]) for r in records]
    over["baseline_model"] = [family_label(r, r["seeds"], r["baseline"]) for r in records]
    over["test"] = "over pretraining seeds (samples: per-seed paired differences); " + PAIRED_TEST
    return over.reindex(columns=list(paired.columns))


def with_pretraining_seed_rows(paired: pd.DataFrame, hooks: Any) -> pd.DataFrame:
    """The paired table plus its rows over pretraining seeds, each row naming what its interval covers,
    and p_holm: Holm's correction over every comparison in the table."""
    sample_unit, seed_unit = suite_units(hooks)
    if paired.empty:
        return paired.assign(interval=pd.Series(dtype=str))
    over = paired_over_pretraining_seeds(paired)
    if not over.empty:
        paired = pd.concat([paired, over], ignore_index=True)
    interval = np.where(paired["ckpt_seed"].astype(str) == "all", "pretraining seeds",
                        np.where(paired["seed"].astype(str) == "all", seed_unit, sample_unit))
    return paired.assign(interval=interval, p_holm=holm(paired["p_ttest"].to_numpy(float)))


def markdown_table(ranked: pd.DataFrame) -> str:
    """Entries (model [setting] @ dataset) as rows, sorted by average rank; `mean ± ci95 (rank)` per
    task/metric, the best rank of each (dataset, setting, column) in bold."""
    if ranked.empty:
        return "_no results_\n"
    columns = sorted(ranked["column"].unique())
    entries = ranked.drop_duplicates("entry").sort_values(["setting", "avg_rank", "entry"])["entry"].tolist()
    header = "| model | avg rank | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    best = ranked.groupby(["dataset", "setting", "column"], dropna=False)["rank"].min()
    engines = ranked.groupby("entry")["engine"].agg(lambda v: ",".join(sorted({e for e in v if e})))
    if engines.any():  # say which engine produced each row's numbers
        header = header.replace("| avg rank |", "| engine | avg rank |")
        lines = [header, "|" + "---|" * (len(columns) + 3)]
    by_entry: dict[str, dict[str, dict[str, Any]]] = {}
    for record in ranked.to_dict("records"):
        by_entry.setdefault(record["entry"], {})[record["column"]] = record
    for entry in entries:
        mine = by_entry[entry]
        cells = []
        for column in columns:
            if column not in mine:
                cells.append("missing")
                continue
            r = mine[column]
            interval = f"± {r['ci95']:.2f}" if np.isfinite(r["ci95"]) else "(n = 1: no interval)"
            text = f"{r['mean']:.2f} {interval} ({r['rank']:g})"
            if r["rank"] == best[(r["dataset"], r["setting"], column)]:
                text = f"**{text}**"
            cells.append(text + (" †" if r["deterministic"] else ""))
        avg = next(iter(mine.values()))["avg_rank"]
        engine = f" {engines[entry]} |" if engines.any() else ""
        lines.append(f"| {entry} |{engine} {avg:.2f} | " + " | ".join(cells) + " |")
    if ranked["deterministic"].any():
        lines += ["", DETERMINISTIC_NOTE]
    return "\n".join(lines) + "\n"


def interval_text(ci95: float) -> str:
    """`± x.xx`, or the words for a value without an interval (n = 1)."""
    return NO_INTERVAL if not np.isfinite(ci95) else f"± {ci95:.2f}"


def p_text(p: float) -> str:
    return "-" if not np.isfinite(p) else f"{p:.3g}"


def not_tabulated(scan: Scan) -> list[str]:
    """The Markdown lines naming failed, corrupt and pending cells."""
    lines = [f"- failed {failure['cell_id']}: {' '.join(failure['message'])}"
             for failure in sorted(scan.failed, key=lambda f: f["cell_id"])]
    lines += [f"- corrupt: {message}" for message in scan.corrupt]
    if scan.pending:
        lines.append(f"- {len(scan.pending)} cell(s) without a result yet")
    return lines


def suite_markdown(suite: str, ranked: pd.DataFrame, paired: pd.DataFrame, families: pd.DataFrame,
                   curves: pd.DataFrame, hooks: Any, notes: list[str],
                   fingerprint_modes: dict[str, str] | None = None) -> str:
    """<suite>.md from the tables written beside it; `fingerprint_modes`: dataset label -> how it was
    fingerprinted (said in one line)."""
    from bench import figures

    headline = figures.headline_rows(ranked).copy()
    if not headline.empty:
        headline["avg_rank"] = headline.groupby(["suite", "entry"], dropna=False)["rank"].transform("mean")
    covered = sorted(set(ranked["interval"]) - {NO_INTERVAL}) if not ranked.empty else []
    md = [f"# {suite}\n", "Mean ± 95% CI (rank) of the headline metrics (every metric: "
          f"`{suite}.csv`). Models whose difference from the best is within the 95% "
          "interval of the difference tie and share the average rank; `avg rank` is the mean over the "
          "columns shown. `missing`: no stored result (failed or not run), never zero.\n"]
    if covered:
        md.append(f"Intervals cover the variance over: {'; '.join(covered)} (one checkpoint, one pretraining "
                  "seed each: they say nothing about another pretraining run, see below).\n")
    md.append(interval_rule(hooks) + "\n")
    if fingerprint_modes:
        from bench.fingerprint import FINGERPRINT_MODES

        md.append("Dataset fingerprints: " + "; ".join(
            f"`{label}` {mode} ({FINGERPRINT_MODES.get(mode, 'unknown mode')})"
            for label, mode in sorted(fingerprint_modes.items())) + ".\n")
    markdown_hook = getattr(hooks, "leaderboard_markdown", None)
    custom_table = markdown_hook(ranked) if markdown_hook is not None and not ranked.empty else None
    md.append(custom_table if custom_table is not None else markdown_table(headline))
    published = getattr(hooks, "published_rows", None)  # cited numbers beside the measured, never ranked with them
    if published is not None and published() is not None:
        from bench.published import published_markdown

        md.append(published_markdown(published()))
    if not curves.empty:
        md.append(f"\nOver the course of pretraining: `{suite}_curves.csv` and `{suite}_curves.png` "
                  f"({curves['model'].nunique()} model(s), epochs {curves['epoch'].min()}-{curves['epoch'].max()}).\n")
    if not families.empty:
        md.append("\n## Over pretraining seeds\n")
        md.append("Each pretraining seed's checkpoint gives one sample (its mean above); the interval is "
                  "t(0.975, seeds − 1) · sd / √seeds over pretraining seeds.\n")
        md.append("| model | task | metric | seeds | mean | 95% CI (pretraining seeds) |")
        md.append("|---|---|---|---|---|---|")
        for _, r in figures.headline_rows(families).iterrows():
            md.append(f"| {r['model']} | {r['task']} | {r['metric']} | {r['n']} | {r['mean']:.2f} | "
                      f"{interval_text(r['ci95'])} |")
        md.append("")
    paired_md = figures.headline_rows(paired)
    if not paired_md.empty:
        md.append("\n## Hard-negative samplers vs their NCE twins (paired, same samples)\n")
        md.append("Twins share method, data, epochs, arch and pretraining seed; `pretraining seed` all: "
                  "each seed's paired difference is one sample. `interval over` names what the 95% CI covers. "
                  "The 95% CI is the paired t-test's own (t(0.975, n − 1) · sd / √n): it excludes 0 exactly when "
                  f"p (t) < 0.05. {holm_sentence(suite, int(paired['p_holm'].notna().sum()))}\n")
        md.append("| task | metric | dataset | setting | method | seed | pretraining seed | n | pair | means "
                  "| difference | 95% CI | interval over | p (t) | p (Holm) | p (sign) |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in paired_md.to_dict("records"):
            md.append(f"| {r['task']} | {r['metric']} | {r['dataset'] or '-'} | {r['setting'] or 'default'} | "
                      f"{r['method']} | {r['seed']} | {r['ckpt_seed']} | {r['n']} | {r['sampler']} − {r['baseline']} | "
                      f"{r['sampler_mean']:.2f} vs {r['baseline_mean']:.2f} | {r['mean_diff']:+.2f} | "
                      f"{interval_text(r['ci95_diff'])} | {r['interval']} | {p_text(r['p_ttest'])} | "
                      f"{p_text(r['p_holm'])} | {p_text(r['p_sign'])} |")
        md.append("")
    if notes:
        md += ["\n## Not tabulated\n", *notes, ""]
    return "\n".join(md)


def holm_sentence(suite: str, tests: int) -> str:
    if tests == 0:
        return "No row has a test (one value each: n = 1)."
    return (f"p (Holm) corrects p (t) for the {tests} comparisons of `{suite}_paired.csv` read together; "
            "read a single comparison chosen in advance by p (t).")


def interval_rule(hooks: Any) -> str:
    """One sentence: which quantile the intervals of this table use."""
    if getattr(hooks, "sample_interval", STUDENT_T) == STUDENT_T:
        return ("Every interval is Student's t: t(0.975, n − 1) · sd / √n over the n values averaged "
                "(docs/statistics.md); a single value has no interval.")
    sample_unit, _ = suite_units(hooks)
    return (f"Intervals over {sample_unit} follow the Meta-Dataset convention, 1.96 · population sd / √n "
            "(n = 600 episodes: within a fraction of a percent of Student's t); every interval over seeds "
            "is Student's t, t(0.975, n − 1) · sd / √n (docs/statistics.md).")


def _atomic_text(path: Path, text: str) -> None:
    from ringbench_common.atomic_files import atomic_write_text

    atomic_write_text(path, text)  # a unique temporary: two runners finishing together may both write


def suite_hooks(suite: str):
    """The registered Suite instance, for its optional leaderboard hooks; None for an unknown name."""
    from bench.suite import InputError
    from bench.suites import load_suite

    try:
        return load_suite(suite)
    except InputError:
        return None


def cell_count(root: Path, suite: str) -> int:
    """How many cell folders a suite has (a directory listing, no file read)."""
    return sum(1 for _ in ResultStore(root, suite).iter_cells())


@without_cyclic_gc
def write_suite_tables(root: str | os.PathLike, suite: str, plot: bool = True,
                       stream=None, scan: Scan | None = None, drawer=None) -> list[Path]:
    """Build and write <suite>.csv, .md, .png and <suite>_paired.csv from the stored cells. The figures
    go to `drawer` (a figure_workers.FigureDrawer the caller finishes); without one, this call makes its own."""
    from bench.figure_workers import FigureDrawer, workers_for

    stream = stream or sys.stderr
    root = Path(root)
    own_drawer = plot and drawer is None
    if own_drawer:
        drawer = FigureDrawer(workers_for(cell_count(root, suite)))
    try:
        written = _write_suite_tables(root, suite, plot, stream, scan, drawer)
        return written + drawer.finish() if own_drawer else written
    finally:
        if own_drawer:
            drawer.close()


def _write_suite_tables(root: Path, suite: str, plot: bool, stream, scan: Scan | None, drawer) -> list[Path]:
    scan = scan if scan is not None else scan_suite(root, suite)
    for message in scan.corrupt:
        print(f"corrupt result (not tabulated; `bench.run` recomputes it): {message}", file=stream)
    from bench import figures

    long = long_table(scan)
    curves = figures.curve_table(long)
    long = long[~figures.is_snapshot(long)]  # snapshots make the curves; ranks and twins use final encoders
    hooks = suite_hooks(suite)
    # each figure is asked for as soon as its table exists: with a worker, drawing overlaps the rest
    # (the ranking first: it is the quicker table, so the worker starts sooner)
    ranked = rank_table(aggregate(long))
    ranked["interval"] = interval_column(ranked, hooks)
    if plot and not ranked.empty:
        drawer.draw("headline", ranked, root / f"{suite}.png", suite)
    per_seed_pairs = paired_comparisons(long, scan.samples)
    unpaired = dict(per_seed_pairs.attrs.get("unpaired", {}))
    paired = with_pretraining_seed_rows(per_seed_pairs, hooks)
    if plot:
        drawer.draw("paired", paired, root / f"{suite}_paired.png", suite)
    if plot and not curves.empty:
        drawer.draw("curves", curves, root / f"{suite}_curves.png", suite)
    families = over_pretraining_seeds(ranked)
    written = []
    csv_path = root / f"{suite}.csv"
    _atomic_text(csv_path, ranked.to_csv(index=False))
    written.append(csv_path)
    paired_path = root / f"{suite}_paired.csv"
    _atomic_text(paired_path, paired.to_csv(index=False))
    written.append(paired_path)
    if not curves.empty:
        curves_path = root / f"{suite}_curves.csv"
        _atomic_text(curves_path, curves.to_csv(index=False))
        written.append(curves_path)
    seeds_path = root / f"{suite}_pretraining_seeds.csv"
    if not families.empty:
        _atomic_text(seeds_path, families.to_csv(index=False))
        written.append(seeds_path)
    elif seeds_path.exists():
        seeds_path.unlink()  # no longer two pretraining seeds of anything: no stale table
    notes = not_tabulated(scan) + unpaired_notes(unpaired)
    markdown = suite_markdown(suite, ranked, paired, families, curves, hooks, notes, scan.fingerprint_modes)
    md_path = root / f"{suite}.md"
    _atomic_text(md_path, markdown)
    written.append(md_path)
    return written  # the figures' paths come from drawer.finish()


@without_cyclic_gc
def write_all(root: str | os.PathLike, suites: Iterable[str] | None = None, plot: bool = True) -> list[Path]:
    from bench.figure_workers import FigureDrawer, workers_for

    root = Path(root)
    names = list(suites) if suites else suites_in(root)
    written = []
    longs = []
    scans = {}
    drawer = FigureDrawer(workers_for(sum(cell_count(root, suite) for suite in names)) if plot else 0)
    try:
        for suite in names:
            scans[suite] = scan_suite(root, suite)
            written += write_suite_tables(root, suite, plot=plot, scan=scans[suite], drawer=drawer)
        for suite in suites_in(root):  # long.csv always covers every suite in the folder
            longs.append(long_table(scans[suite] if suite in scans else scan_suite(root, suite)))
        if longs:
            long_path = root / "long.csv"
            _atomic_text(long_path, pd.concat(longs, ignore_index=True).to_csv(index=False))
            written.append(long_path)
        return written + drawer.finish()
    finally:
        drawer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leaderboard",
                                     description="Rebuild leaderboards from stored result.json files.")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default results/)")
    parser.add_argument("--suite", action="append", default=[], help="only these suites (repeatable)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG figures")
    args = parser.parse_args(argv)
    from bench.store import results_root_default

    root = args.results or results_root_default()
    if not root.is_dir():
        print(f"error: results folder {root} does not exist", file=sys.stderr)
        return 2
    names = args.suite or suites_in(root)
    unknown = [s for s in names if s not in suites_in(root)]
    if unknown:
        print(f"error: no stored cells for suite(s) {', '.join(unknown)} under {root}; "
              f"suites with results: {', '.join(suites_in(root)) or '(none)'}", file=sys.stderr)
        return 2
    from ringbench_common.atomic_files import check_writable, describe_os_error

    try:  # a read-only or full results folder: one line, exit 2, the stored results untouched
        check_writable(root, "results folder")
        written = write_all(root, names, plot=not args.no_plot)
    except OSError as error:
        print(f"error: the leaderboard was not written: {describe_os_error(error)}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
