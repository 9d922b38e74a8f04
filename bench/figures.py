"""The figures people look at, and the curve table behind them.

    python -m bench.figures [--results DIR] [--suite NAME ...]   # redraw every PNG from the CSV tables

bench.leaderboard calls these with the tables it builds from the stored cells; the command above
redraws the PNGs from `<suite>.csv`, `<suite>_paired.csv` and `<suite>_curves.csv` alone.

    <suite>.png          headline metrics only: mean with 95% interval per task, one colour per model
    <suite>_paired.png   hard-negative sampler - its NCE twin per task and headline metric with its 95%
                         interval (a forest plot), coloured by the Holm-corrected verdict
    <suite>_curves.csv   metric vs pretraining epoch: one row per (model, task, metric, epoch)
    <suite>_curves.png   headline metrics vs pretraining epoch, one line per (method, sampler), twins in
                         the same colour (hard negatives solid, the baseline sampler dashed), 95%
                         Student-t bands, and the ring band w_out on a secondary axis

A large leaderboard draws these in worker processes (bench.figure_workers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from bench.intervals import NO_INTERVAL, half_width_from_population_std, holm, t_half_width

HEADLINE_EXACT = {"bbox/AP", "segm/AP", "keypoints/AP"}
HEADLINE_PREFIXES = ("acc/", "top1/")
FAMILY_KEYS = ["method", "sampler", "pretrain_dataset", "epochs", "ckpt_seed", "arch"]
SETTING_KEYS = ["dataset", "setting", "identity"]  # evaluations that differ in these are never averaged
CURVE_COLUMNS = ["suite", "model", *FAMILY_KEYS, "task", "dataset", "setting", "metric", "epoch", "w_out", "mean",
                 "ci95", "n", "n_seeds", "higher_is_better", "checkpoint_sha256"]
HARD_STYLES = ["-", "-.", ":"]  # hard-negative samplers in name order; the baseline sampler dashed
BASELINE_STYLE = "--"


def is_headline(metric: str) -> bool:
    return metric in HEADLINE_EXACT or metric.startswith(HEADLINE_PREFIXES) or metric.endswith("/top1")


def headline_metrics(metrics: Iterable[str]) -> list[str]:
    """The headline metrics among these; all of them when none is one (e.g. the estimator check)."""
    metrics = sorted(set(metrics))
    chosen = [m for m in metrics if is_headline(m)]
    return chosen or metrics


def headline_rows(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    return table[table["metric"].isin(headline_metrics(table["metric"]))]


def curve_epoch(long: pd.DataFrame) -> pd.Series:
    """The pretraining epoch of each row's encoder: its snapshot epoch, or its run's length for final
    encoders written before snapshots existed."""
    if "epoch" not in long:
        return long["epochs"]
    return long["epoch"].where(long["epoch"].notna(), long["epochs"])


def is_snapshot(long: pd.DataFrame) -> pd.Series:
    """Rows of encoders taken before the end of their run (they go to the curves, not the ranking)."""
    if long.empty or "epoch" not in long:
        return pd.Series(False, index=long.index)
    epoch = pd.to_numeric(long["epoch"], errors="coerce")
    epochs = pd.to_numeric(long["epochs"], errors="coerce")
    return epoch.notna() & epochs.notna() & (epoch < epochs)


def family_label(row) -> str:
    return (f"{row['method']}/{row['sampler']} {row['pretrain_dataset']} e{row['epochs']} s{row['ckpt_seed']}")


def curve_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (model family, task, metric, epoch) for families evaluated at more than one epoch;
    several evaluation seeds are averaged (their spread gives a Student-t ci95), one seed keeps its own interval."""
    if long.empty or long["method"].isna().all():
        return pd.DataFrame(columns=CURVE_COLUMNS)
    long = long[long["method"].notna()].copy()
    long["epoch"] = pd.to_numeric(curve_epoch(long), errors="coerce")
    long = long[long["epoch"].notna()]
    several = long.groupby(FAMILY_KEYS, dropna=False)["epoch"].transform("nunique") > 1
    long = long[several]
    if long.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    for column in ("w_out", *SETTING_KEYS):
        if column not in long:
            long[column] = np.nan if column == "w_out" else ""
    long[SETTING_KEYS] = long[SETTING_KEYS].fillna("")
    keys = ["suite", *FAMILY_KEYS, "task", *SETTING_KEYS, "metric", "epoch"]
    grouped = long.groupby(keys, dropna=False, sort=True)
    first = grouped.first()
    count = grouped["mean"].count()
    spread = grouped["mean"].std(ddof=0).fillna(0.0)
    out = pd.DataFrame({
        "w_out": first["w_out"],
        "mean": grouped["mean"].mean(),
        "ci95": np.where(count == 1, first["ci95"], half_width_from_population_std(spread, count)),
        "n": np.where(count == 1, first["n"], count).astype(int),
        "n_seeds": count.astype(int),
        "higher_is_better": first["higher_is_better"].astype(bool),
        "checkpoint_sha256": first["checkpoint_sha256"],
    }).reset_index()
    out["epoch"] = out["epoch"].astype(int)
    out["model"] = out.apply(family_label, axis=1)
    return out[CURVE_COLUMNS].sort_values(["suite", "model", "task", "metric", "epoch"], ignore_index=True)


# ------------------------------------------------------------------------------------------ drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DPI = 120


def _save(fig, path: Path, tight: bool = True) -> Path:
    """tight=False for figures that lay out their own margins (_text_inches): one draw instead of two."""
    from ringbench_common.atomic_files import atomic_write

    # a unique temporary: two runners finishing together may both draw
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=DPI, bbox_inches="tight" if tight else None,
                                                  format="png"),
                 fsync=False, suffix=".png")
    _pyplot().close(fig)
    return Path(path)


def _text_inches(texts: Iterable[str], fontsize: float) -> float:
    """Width of the widest text in inches, measured by the Agg renderer's font engine without drawing."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer, font = RendererAgg(1, 1, DPI), FontProperties(size=fontsize)
    widths = [renderer.get_text_width_height_descent(str(t), font, ismath=False)[0] for t in texts]
    return max(widths, default=0.0) / DPI


def _method_colours(methods: Iterable[str]) -> dict[str, tuple]:
    cmap = _pyplot().get_cmap("tab10")
    return {method: cmap(i % 10) for i, method in enumerate(sorted({str(m) for m in methods}))}


def baseline_samplers(samplers: Iterable[str]) -> set[str]:
    """The samplers among these that the registry names as another's baseline (NCE): drawn dashed."""
    from pretrain.sampler_twins import BASELINE_TWINS

    return {s for s in {str(s) for s in samplers} if s in BASELINE_TWINS and BASELINE_TWINS[s] is None}


def _line_style(sampler: str, baselines: set[str], hard: list[str]) -> str:
    if sampler in baselines:
        return BASELINE_STYLE
    if sampler not in hard:
        hard.append(sampler)
    return HARD_STYLES[hard.index(sampler) % len(HARD_STYLES)]


def plot_curves(curves: pd.DataFrame, path: Path, suite: str) -> Path | None:
    """Headline metrics vs pretraining epoch, one panel per (task, metric); None when there is no curve."""
    curves = headline_rows(curves)
    if curves.empty:
        return None
    plt = _pyplot()
    panel_keys = ["task", *[k for k in ("dataset", "setting") if k in curves and curves[k].fillna("").nunique() > 1],
                  "metric"]
    panels = sorted(curves.fillna({"dataset": "", "setting": ""}).groupby(panel_keys).groups)
    ncols = min(3, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(7.0, 5.2 * ncols), 4.0 * nrows), squeeze=False)
    colours = _method_colours(curves["method"])
    baselines = baseline_samplers(curves["sampler"].dropna().unique())
    hard: list[str] = []
    line_keys = ["method", "sampler", "pretrain_dataset", "arch", "epochs"]
    several_data = curves[["pretrain_dataset", "arch", "epochs"]].drop_duplicates().shape[0] > 1
    handles: dict[str, object] = {}
    for ax, panel in zip(axes.flat, panels):
        selected = np.ones(len(curves), dtype=bool)
        for key, value in zip(panel_keys, panel):
            selected &= curves[key].fillna("").to_numpy() == value
        mine = curves[selected]
        metric = panel[-1]
        band_lines = mine[mine["w_out"].notna()].groupby(line_keys).ngroups  # lines with a ring band schedule
        band_axis = None
        for key, line in mine.groupby(line_keys, sort=True):
            method, sampler = str(key[0]), str(key[1])
            # several pretraining seeds: their mean, the band from their spread
            per_epoch = line.groupby("epoch").agg(mean=("mean", "mean"), ci=("ci95", "first"), seeds=("mean", "count"),
                                                  spread=("mean", "std"), w_out=("w_out", "first"))
            band = np.where(per_epoch["seeds"] > 1, t_half_width(per_epoch["spread"].fillna(0), per_epoch["seeds"]),
                            per_epoch["ci"])  # NaN (one value, no interval): no band there
            epochs = per_epoch.index.to_numpy()
            label = f"{method} / {sampler}" + (f" ({key[2]}, {key[3]}, e{key[4]})" if several_data else "")
            colour = colours[method]
            style = _line_style(sampler, baselines, hard)
            (handle,) = ax.plot(epochs, per_epoch["mean"], style, color=colour, marker="o", markersize=3.5,
                                linewidth=1.8, label=label)
            if sampler in baselines:  # hatched, so the twins' overlapping bands stay apart
                ax.fill_between(epochs, per_epoch["mean"] - band, per_epoch["mean"] + band, facecolor="none",
                                edgecolor=colour, hatch="///", alpha=0.35, linewidth=0)
            else:
                ax.fill_between(epochs, per_epoch["mean"] - band, per_epoch["mean"] + band, color=colour,
                                alpha=0.18, linewidth=0)
            handles.setdefault(label, handle)
            if per_epoch["w_out"].notna().any():
                if band_axis is None:
                    band_axis = ax.twinx()
                    band_axis.set_ylim(0, 1.05)
                    band_axis.set_ylabel("ring w_out (dotted steps)", color="0.25", fontsize=9)
                    band_axis.tick_params(axis="y", colors="0.35", labelsize=8)
                # one ring line: a dark schedule that stands out from the bands; several: their colours
                schedule_colour = "0.15" if band_lines == 1 else colour
                (band_handle,) = band_axis.step(epochs, per_epoch["w_out"], where="pre", color=schedule_colour,
                                                alpha=0.8, linestyle=":", linewidth=1.6,
                                                label=f"w_out ({method} / {sampler})")
                handles.setdefault(f"w_out ({method} / {sampler})", band_handle)
        if band_axis is not None:
            ax.set_zorder(band_axis.get_zorder() + 1)  # the metric lines above the schedule
            ax.patch.set_visible(False)
        ax.set_title(" ".join(str(p) for p in panel[:-1] if p) + f": {metric}", fontsize=10)
        ax.set_xlabel("pretraining epoch")
        ax.set_ylabel(f"{metric} (mean, 95% band)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{suite}: transfer vs pretraining epoch\nhard negatives solid, NCE dashed (one colour per "
                 "method), 95% Student-t bands (NCE hatched); dotted steps: the ring band w_out used in that epoch",
                 fontsize=10)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(4, len(handles)),
               fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.07 + 0.03 * ((len(handles) - 1) // 4), 1, 0.93))
    return _save(fig, path)


def forest_rows(paired: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, headline metric, twin pair): the comparison over seeds when there is one,
    else the single evaluation seed's."""
    if paired.empty:
        return paired
    paired = headline_rows(paired).copy()
    paired["seed"] = paired["seed"].astype(str)
    keys = ["task", "metric", "sampler_model", "baseline_model"]
    over_seeds = paired[paired["seed"] == "all"]
    covered = pd.MultiIndex.from_frame(over_seeds[keys].astype(str))
    single = paired[(paired["seed"] != "all") & ~pd.MultiIndex.from_frame(paired[keys].astype(str)).isin(covered)]
    return pd.concat([over_seeds, single], ignore_index=True)


MAX_FOREST_ROWS = 40


SIGNIFICANCE = 0.05
NOT_SIGNIFICANT = "0.45"  # grey


def plot_paired(paired: pd.DataFrame, path: Path, suite: str) -> Path | None:
    """Forest plot of each hard-negative sampler − its NCE twin with the paired t-test's 95% interval,
    sorted by effect, coloured by the Holm-corrected verdict over the whole paired table (every row of
    <suite>_paired.csv, not only the rows drawn); None when there is no pair."""
    if not paired.empty and "p_holm" not in paired:  # a table written before the correction existed
        paired = paired.assign(p_holm=holm(paired["p_ttest"].to_numpy(float)))
    family = int(paired["p_holm"].notna().sum()) if not paired.empty else 0
    rows = forest_rows(paired)
    if rows.empty:
        return None
    plt = _pyplot()
    total = len(rows)
    if total > MAX_FOREST_ROWS:  # a readable figure: the largest effects; the CSV keeps every pair
        rows = rows.loc[rows["mean_diff"].abs().nlargest(MAX_FOREST_ROWS).index]
    rows = rows.sort_values("mean_diff", ignore_index=True)
    several_pairs = rows[["method", "pretrain_dataset", "epochs", "ckpt_seed"]].drop_duplicates().shape[0] > 1
    labels = []
    for _, r in rows.iterrows():
        seeds = f"{int(r['n'])} eval seeds" if r["seed"] == "all" else f"seed {r['seed']}, n={int(r['n'])}"
        who = f" [{r['method']} {r['pretrain_dataset']} e{r['epochs']} s{r['ckpt_seed']}]" if several_pairs else ""
        for key in ("dataset", "setting"):  # which data and options, when the pairs differ in them
            if key in rows and rows[key].fillna("").nunique() > 1 and str(r[key]) not in ("", "nan"):
                who += f" {r[key]}"
        labels.append(f"{r['sampler']} − {r['baseline']}  {r['task']}  {r['metric']}{who}  ({seeds})")
    # margins from the measured label widths: no tight bounding box, so the figure is drawn once
    annotations = [_annotation(r) for _, r in rows.iterrows()]
    left, plot_width = _text_inches(labels, 9) + 0.25, 6.0
    right = _text_inches(annotations, 9) + 0.3
    height = 2.0 + 0.42 * len(rows)
    fig, ax = plt.subplots(figsize=(left + plot_width + right, height))
    fig.subplots_adjust(left=left / (left + plot_width + right), right=1 - right / (left + plot_width + right),
                        bottom=1.15 / height, top=1 - 0.6 / height)
    ys = np.arange(len(rows))
    ci = rows["ci95_diff"].to_numpy(float)
    low, high = rows["mean_diff"] - np.nan_to_num(ci), rows["mean_diff"] + np.nan_to_num(ci)
    colours = verdict_colours(rows["mean_diff"], rows["p_holm"])
    for colour in np.unique(colours):  # one call per colour, not per row
        picked = colours == colour
        with_interval = picked & np.isfinite(ci)
        ax.errorbar(rows["mean_diff"][with_interval], ys[with_interval], xerr=ci[with_interval], fmt="o",
                    color=colour, ecolor=colour, capsize=4, markersize=6, linewidth=2)
        alone = picked & ~np.isfinite(ci)  # n = 1: the point alone, hollow
        if alone.any():
            ax.plot(rows["mean_diff"][alone], ys[alone], "o", color=colour, markerfacecolor="white", markersize=6)
    ax.axvline(0, color="black", linewidth=1)
    span = max(float(np.nanmax(np.abs(np.r_[low, high]))), 1e-9)
    ax.set_xlim(-1.15 * span, 1.15 * span)
    for y, text in zip(ys, annotations):
        ax.annotate(text, (1.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=9)
    ax.set_yticks(ys, labels, fontsize=9)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("hard-negative sampler − its NCE twin (metric units; > 0: the hard negatives higher)\n"
                  "95% interval of the paired t-test (Student's t); right: difference ± interval, p uncorrected and Holm")
    shown = "" if total <= MAX_FOREST_ROWS else f" (the {MAX_FOREST_ROWS} largest of {total}; all in {suite}_paired.csv)"
    ax.set_title(f"{suite}: hard-negative sampler − NCE twin per task and headline metric, sorted by effect{shown}",
                 fontsize=10)
    from matplotlib.lines import Line2D

    verdicts = [("tab:green", "higher"), ("tab:red", "lower"), (NOT_SIGNIFICANT, "no difference")]
    fig.legend([Line2D([], [], color=c, marker="o", linewidth=2) for c, _ in verdicts],
               [f"{word}: Holm-corrected p < 0.05" if c != NOT_SIGNIFICANT else
                (f"{word} after Holm's correction over the {family} comparisons of {suite}_paired.csv" if family
                 else "no test: one value per twin (n = 1)")
                for c, word in verdicts],
               loc="lower center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, tight=False)


def verdict_colours(mean_diff, p_holm) -> np.ndarray:
    """Green (higher) or red (lower) where the Holm-corrected p < 0.05, grey elsewhere (NaN: no test)."""
    mean_diff, p_holm = np.asarray(mean_diff, dtype=float), np.asarray(p_holm, dtype=float)
    significant = p_holm < SIGNIFICANCE
    return np.where(~significant, NOT_SIGNIFICANT, np.where(mean_diff > 0, "tab:green", "tab:red"))


def _annotation(row) -> str:
    ci = float(row["ci95_diff"])
    interval = f"± {ci:.2f}" if np.isfinite(ci) else NO_INTERVAL
    p, p_holm = float(row["p_ttest"]), float(row["p_holm"])
    tests = f"p {p:.2g}, Holm {p_holm:.2g}" if np.isfinite(p) else "no test"
    return f"{row['mean_diff']:+.2f} {interval}  {tests}"


# Above this many tasks per metric, the headline figure is a rank heatmap: a dot per model and task
# would need a figure metres wide, and nobody reads 50 x 20 error bars.
HEADLINE_MAX_TASKS = 12


def plot_headline(ranked: pd.DataFrame, path: Path, suite: str) -> Path | None:
    """Means with 95% intervals of the headline metrics, one panel per headline metric, one colour per model;
    a heatmap of per-task ranks when a metric has more than HEADLINE_MAX_TASKS tasks."""
    ranked = headline_rows(ranked)
    if ranked.empty:
        return None
    row = "entry" if "entry" in ranked else "model"  # the leaderboard's table row (model, setting, dataset)
    models = ranked.drop_duplicates(row).sort_values(["avg_rank", row])[row].tolist()
    if ranked.groupby("metric")["task"].nunique().max() > HEADLINE_MAX_TASKS:
        return plot_rank_heatmap(ranked, models, row, path, suite)
    plt = _pyplot()
    metrics = sorted(ranked["metric"].unique())
    cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    ncols = min(3, len(metrics))
    nrows = (len(metrics) + ncols - 1) // ncols
    tasks_per_metric = max(ranked.groupby("metric")["task"].nunique())
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.2, 1.3 * tasks_per_metric + 2.2) * ncols, 3.6 * nrows),
                             squeeze=False)
    width = 0.8 / max(len(models), 1)
    for ax, metric in zip(axes.flat, metrics):
        mine = ranked[ranked["metric"] == metric]
        tasks = sorted(mine["task"].unique())
        for m, model in enumerate(models):
            rows = mine[mine[row] == model].set_index("task")
            xs = [t - 0.4 + width * (m + 0.5) for t, task in enumerate(tasks) if task in rows.index]
            present = [task for task in tasks if task in rows.index]
            if present:
                ax.errorbar(xs, rows.loc[present, "mean"], yerr=rows.loc[present, "ci95"].astype(float), fmt="o",
                            capsize=3, color=cmap(m % cmap.N), label=model)  # NaN (n = 1): no bar
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8, rotation=15 if len(tasks) > 3 else 0)
        ax.set_xlim(-0.6, len(tasks) - 0.4)
        ax.set_title(metric, fontsize=10)
        ax.set_ylabel("mean (95% CI)")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    single = "; a point without a bar: one value (n = 1), no interval" if ranked["ci95"].isna().any() else ""
    fig.suptitle(f"{suite}: headline metrics, mean with 95% CI (every metric: {suite}.csv){single}", fontsize=11)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 3), 1, 0.94))
    return _save(fig, path)


def plot_rank_heatmap(ranked: pd.DataFrame, models: list[str], row: str, path: Path, suite: str) -> Path:
    """One panel per headline metric: models (best average rank first) x tasks, coloured by the rank
    within each task (ties share their average rank); blank = no result."""
    plt = _pyplot()
    metrics = sorted(ranked["metric"].unique())
    tasks = {metric: sorted(ranked.loc[ranked["metric"] == metric, "task"].unique()) for metric in metrics}
    widest = max(len(t) for t in tasks.values())
    left = _text_inches(models, 7) + 0.2
    bottom = _text_inches([t for names in tasks.values() for t in names], 7) + 0.15  # rotated task names
    cell_width, cell_height, title, suptitle, colour_bar = 0.24, 0.22, 0.3, 0.35, 0.75
    grid_width = max(widest * cell_width, 3.0)
    panel = len(models) * cell_height + title + bottom
    width = left + grid_width + colour_bar
    height = suptitle + panel * len(metrics)
    fig, axes = plt.subplots(len(metrics), 1, squeeze=False, figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - 0.6 / width, bottom=bottom / height,
                        top=1 - (suptitle + title) / height, hspace=(title + bottom) / (len(models) * cell_height))
    for ax, metric in zip(axes.flat, metrics):
        grid = (ranked[ranked["metric"] == metric].pivot_table(index=row, columns="task", values="rank", aggfunc="first")
                .reindex(index=models, columns=tasks[metric]))
        image = ax.imshow(np.ma.masked_invalid(grid.to_numpy(dtype=float)), cmap="viridis_r", aspect="auto",
                          interpolation="nearest", vmin=1, vmax=max(len(models), 2))
        ax.set_xticks(range(len(grid.columns)), grid.columns, fontsize=7, rotation=90)
        ax.set_yticks(range(len(models)), models, fontsize=7)
        ax.set_title(f"{metric}: rank within each task (1 = best; ties share the average rank)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.15 / grid_width, pad=0.06 / grid_width).set_label("rank", fontsize=8)
    fig.suptitle(f"{suite}: {len(models)} models x {widest} tasks, best average rank at the top "
                 f"(means and intervals: {suite}.csv)", fontsize=10, y=1 - 0.08 / height, va="top")
    return _save(fig, path, tight=False)


def draw_headline(ranked: pd.DataFrame, path: Path, suite: str) -> Path | None:
    """The suite's own leaderboard figure when it has one, else plot_headline."""
    from bench.suite import InputError
    from bench.suites import load_suite

    try:
        hooks = load_suite(suite)
    except InputError:  # a table of a suite this installation does not have: the generic figure
        hooks = None
    figure_hook = getattr(hooks, "leaderboard_figure", None)
    if figure_hook is not None and figure_hook(ranked, path):
        return Path(path)
    return plot_headline(ranked, path, suite)


def redraw(root: Path, suite: str) -> list[Path]:
    """Every PNG of a suite from its CSV tables (no cell folders needed)."""
    written = []
    tables = {name: root / f"{suite}{name}.csv" for name in ("", "_paired", "_curves")}
    readable = {name: pd.read_csv(path) for name, path in tables.items() if path.is_file() and path.stat().st_size}
    for name, draw in (("", draw_headline), ("_paired", plot_paired), ("_curves", plot_curves)):
        if name in readable and not readable[name].empty:
            path = draw(readable[name], root / f"{suite}{name}.png", suite)
            if path is not None:
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"), help="folder with the <suite>*.csv tables")
    parser.add_argument("--suite", action="append", default=[], help="only these suites (repeatable)")
    args = parser.parse_args(argv)
    suites = args.suite or sorted(p.stem for p in args.results.glob("*.csv")
                                  if not p.stem.endswith(("_paired", "_curves")))
    suites = [s for s in suites if s != "long"]
    if not suites:
        print(f"error: no <suite>.csv tables under {args.results}", file=sys.stderr)
        return 2
    for suite in suites:
        for path in redraw(args.results, suite):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
