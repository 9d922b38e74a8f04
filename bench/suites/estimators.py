"""estimators: is conditional NCE (Ring) a lower bound on MI, with more bias and less variance than NCE?

Cells are task x seed (no checkpoint). A task is one sweep setting: critic (optimal closed form,
or an MLP trained with the NCE or the Ring objective) x true MI x K. Each cell draws `batches`
independent batches of correlated Gaussian pairs and reports, per estimator, the batch estimates as
`mi/<estimator>`, `bias/<estimator>` (estimate minus the true MI) and `log_partition/<estimator>`
(the batch mean of log(1/K sum exp f), so mi = mean positive score - log_partition) metrics; the
true MI, rho and the band-condition rates go into the info. The study itself lives in `studies.estimators`;
this suite only adapts it to the runner (options, tasks, metrics).

    python -m bench.run --suite estimators --executor local
    python -m bench.run --suite estimators mi=1,4 k=64 critics=optimal batches=50
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.options import SuiteOptions, at_least, each_at_least, each_of, option
from bench.suite import Cell, CellOutput, InputError, Metric, Suite, Task
from pretrain.bands import check_band, ring_bounds
from studies.estimators import CRITICS, estimates_frame, task_name


def band_cut(text: str) -> tuple[float, float]:
    """"w_out:w_in" -> (w_out, w_in), checked by the samplers' own band rule (pretrain.bands.check_band)."""
    try:
        w_out, w_in = (float(part) for part in str(text).split(":"))
    except ValueError:
        raise ValueError(f"band {text!r} must be w_out:w_in, e.g. 0.1:0.1") from None
    check_band(w_out, w_in)
    return w_out, w_in


def _bands(texts: tuple[str, ...]) -> tuple[str, ...]:
    for text in texts:
        band_cut(text)
    return texts


def _band(text: str) -> str:
    band_cut(text)
    return text


def _balls(cuts: tuple[float, ...]) -> tuple[float, ...]:
    for w_out in cuts:
        check_band(w_out, 0.0)
    return cuts


def _finite_positive(values: tuple[float, ...]) -> tuple[float, ...]:
    if not values or not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError("every value must be a positive number of nats")
    return values


def _finite_non_negative(values: tuple[float, ...]) -> tuple[float, ...]:
    if not all(math.isfinite(value) and value >= 0 for value in values):
        raise ValueError("expected numbers >= 0")
    return values


def _check_band_size(pool: int, band: tuple[float, float], key: str) -> None:
    lower, upper = ring_bounds(pool, *band)
    if upper <= lower:
        raise InputError(f"estimators {key}={pool}: the band w_out:w_in={band[0]:g}:{band[1]:g} keeps ranks "
                         f"[{lower}, {upper}), which is empty; grow {key} or widen the band")


@dataclass(frozen=True)
class EstimatorsOptions(SuiteOptions):
    dim: int = option(20, "dimensions of x and y", check=at_least(1))
    mi: tuple[float, ...] = option((2.0, 4.0, 6.0, 8.0, 10.0), "true MI values in nats "
                                   "(rho = sqrt(1 - exp(-2 mi / dim)))", check=_finite_positive)
    k: tuple[int, ...] = option((16, 64, 256), "softmax sizes K (positive + K-1 negatives) for the optimal critic; "
                                "K counts the positive, so K >= 2", check=each_at_least(2))
    learned_k: tuple[int, ...] = option((64,), "K values for the learned critics (training costs time)",
                                        check=each_at_least(2))
    critics: tuple[str, ...] = option(CRITICS, "comma list of " + ", ".join(CRITICS), check=each_of(*CRITICS))
    bands: tuple[str, ...] = option(("0.1:0.1", "0.5:0.1", "1.0:0.1"), "ring bands w_out:w_in (released config, "
                                    "SimCLR, anneal start)", check=_bands)
    balls: tuple[float, ...] = option((0.1,), "ball outer cuts w_out", check=_balls)
    hcl_betas: tuple[float, ...] = option((1.0,), "HCL concentration beta (tau+ = 0)", check=_finite_non_negative)
    batches: int = option(100, "independent batches per cell (the std is over these)", check=at_least(2))
    batch_size: int = option(64, "anchors per batch (a batch estimate is their mean)", check=at_least(1))
    pool: int = option(2048, "candidates from p(y) per batch, ranked for the ring", check=at_least(2))
    train_steps: int = option(400, "learned critics: Adam steps", check=at_least(1))
    train_pool: int = option(1024, "learned critics: pool per training step", check=at_least(2))
    train_band: str = option("0.1:0.1", "band of the Ring training objective (annealed from w_out = 1)", check=_band)
    profile: str = option("cpu", "resource profile of every cell")

    @property
    def band_cuts(self) -> tuple[tuple[float, float], ...]:
        return tuple(band_cut(text) for text in self.bands)

    @property
    def train_cut(self) -> tuple[float, float]:
        return band_cut(self.train_band)

    def validate(self, data_root: Path | None) -> EstimatorsOptions:
        """The pools against K and the bands (each band must keep at least one rank of its pool)."""
        largest_k = max(self.k + self.learned_k)  # NCE draws K-1 distinct pool entries
        if self.pool < largest_k - 1:
            raise InputError(f"estimators pool={self.pool}: K={largest_k} needs at least K-1={largest_k - 1} "
                             "candidates per batch")
        largest_learned_k = max(self.learned_k) if self.learned_k else 2
        if any(c != "optimal" for c in self.critics) and self.train_pool < largest_learned_k - 1:
            raise InputError(f"estimators train_pool={self.train_pool}: K={largest_learned_k} needs at least "
                             f"K-1={largest_learned_k - 1} candidates per training batch")
        for band in self.band_cuts + tuple((w_out, 0.0) for w_out in self.balls):
            _check_band_size(self.pool, band, "pool")
        _check_band_size(self.train_pool, self.train_cut, "train_pool")
        return self


class EstimatorsSuite(Suite):
    name = "estimators"
    protocol_version = "1"
    sample_unit = "independent batches"
    uses_checkpoints = False
    reads_data_root = False  # synthetic Gaussians only
    default_seeds = (0,)
    Options = EstimatorsOptions

    def estimator_specs(self, options: EstimatorsOptions):
        from studies.estimators.study import default_estimators

        return default_estimators(list(options.band_cuts), list(options.balls), list(options.hcl_betas))

    # ----------------------------------------------------------------- tasks and cells

    def tasks(self, options: EstimatorsOptions, data_root: Path | None) -> list[Task]:
        opts = options
        tasks = []
        for critic in opts.critics:
            ks = opts.k if critic == "optimal" else opts.learned_k
            for mi in opts.mi:
                for k in ks:
                    tasks.append(Task(name=task_name(critic, mi, k), params={"critic": critic, "mi": mi, "k": k},
                                      profile=opts.profile))
        return tasks

    # ----------------------------------------------------------------- leaderboard hooks

    def leaderboard_markdown(self, ranked: Any) -> str | None:
        from studies.estimators.study import format_table

        frame = estimates_frame(ranked)
        if frame.empty:
            return None
        return ("Per critic, K and true MI (nats): `mean (bias) ± std` of each estimator, the std over "
                "independent batches (over seed means when several seeds ran). K counts the positive "
                "plus K-1 negatives; NCE never exceeds log K.\n\n" + format_table(frame) + "\n")

    def leaderboard_figure(self, ranked: Any, path: Path) -> bool:
        from studies.estimators.study import plot_estimates

        frame = estimates_frame(ranked)
        if frame.empty:
            return False
        plot_estimates(frame, path)
        return True

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        import torch

        from studies.estimators.study import Setting, run_setting

        torch.set_num_threads(max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))))
        opts = cell.settings
        params = cell.task.params
        setting = Setting(params["critic"], float(params["mi"]), int(params["k"]))
        result = run_setting(
            setting,
            self.estimator_specs(opts),
            dim=opts.dim,
            num_batches=opts.batches,
            batch_size=opts.batch_size,
            pool_size=opts.pool,
            train_steps=opts.train_steps,
            train_band=opts.train_cut,
            train_pool_size=opts.train_pool,
            seed=cell.seed,
            progress=True,
        )
        metrics: dict[str, Metric] = {}
        for name, values in result.estimates.values.items():
            ids = [f"batch{i}" for i in range(len(values))]
            metrics[f"mi/{name}"] = Metric.from_samples(values, ids)
            metrics[f"bias/{name}"] = Metric.from_samples([v - result.true_mi for v in values], ids)
            # the log-partition term alone: its spread is the variance the conditional negatives reduce
            metrics[f"log_partition/{name}"] = Metric.from_samples(result.estimates.log_partition[name], ids,
                                                                  higher_is_better=False)
        info: dict[str, Any] = {
            "engine": "studies.estimators",
            "critic": setting.critic,
            "true_mi": result.true_mi,
            "rho": result.rho,
            "K": setting.k,
            "log_K": math.log(setting.k),
            "dim": opts.dim,
            "summary": result.summary(),
            "seconds": result.seconds,
            "threads": torch.get_num_threads(),
        }
        if result.train_history is not None:
            tail = result.train_history[-max(1, len(result.train_history) // 10):]
            info["train_final_estimate"] = sum(tail) / len(tail)
        return CellOutput(metrics=metrics, info=info)
