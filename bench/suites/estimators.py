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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.suite import Cell, CellOutput, InputError, Metric, Suite, Task
from studies.estimators import CRITICS, band_bounds, estimates_frame, task_name


def parse_band(text: str, key: str) -> tuple[float, float]:
    """"w_out:w_in" -> floats with 0 < w_out <= 1 and 0 <= w_in < 1 (the band samplers' rule)."""
    try:
        w_out, w_in = (float(part) for part in str(text).split(":"))
    except ValueError:
        w_out = w_in = math.nan
    if not (0.0 < w_out <= 1.0 and 0.0 <= w_in < 1.0):
        raise InputError(f"estimators {key}: band {text!r} must be w_out:w_in with 0 < w_out <= 1 and "
                         f"0 <= w_in < 1, e.g. 0.1:0.1")
    return w_out, w_in


def _check_band_size(pool: int, band: tuple[float, float], key: str) -> None:
    lower, upper = band_bounds(pool, *band)
    if upper <= lower:
        raise InputError(f"estimators {key}={pool}: the band w_out:w_in={band[0]:g}:{band[1]:g} keeps ranks "
                         f"[{lower}, {upper}), which is empty; grow {key} or widen the band")


@dataclass(frozen=True)
class EstimatorsOptions:
    dim: int
    mi: tuple[float, ...]
    k: tuple[int, ...]
    learned_k: tuple[int, ...]
    critics: tuple[str, ...]
    bands: tuple[tuple[float, float], ...]  # ring bands (w_out, w_in)
    balls: tuple[float, ...]  # ball outer cuts w_out
    hcl_betas: tuple[float, ...]
    batches: int
    batch_size: int
    pool: int
    train_steps: int
    train_pool: int
    train_band: tuple[float, float]
    profile: str

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> EstimatorsOptions:
        """Every check of the sweep's options, in one place; an InputError names the key and what was expected."""
        merged = EstimatorsSuite.complete_options(options)
        if int(merged["dim"]) < 1:
            raise InputError(f"estimators dim={merged['dim']}: expected a positive integer")
        for mi in merged["mi"]:
            if not (isinstance(mi, int | float) and math.isfinite(mi) and mi > 0):
                raise InputError(f"estimators mi={list(merged['mi'])}: every value must be a positive number of nats")
        for key in ("k", "learned_k"):
            for k in merged[key]:
                if int(k) < 2:
                    raise InputError(f"estimators {key}={list(merged[key])}: K counts the positive, so K >= 2")
        unknown = [c for c in merged["critics"] if c not in CRITICS]
        if unknown or not merged["critics"]:
            raise InputError(f"estimators critics={list(merged['critics'])}: valid critics are {', '.join(CRITICS)}")
        for key, minimum in (("batches", 2), ("batch_size", 1), ("pool", 2), ("train_steps", 1), ("train_pool", 2)):
            if int(merged[key]) < minimum:
                raise InputError(f"estimators {key}={merged[key]}: expected an integer >= {minimum}")
        ks, learned_ks = tuple(int(k) for k in merged["k"]), tuple(int(k) for k in merged["learned_k"])
        pool, train_pool = int(merged["pool"]), int(merged["train_pool"])
        # NCE draws K-1 distinct pool entries
        largest_k = max(ks + learned_ks)
        if pool < largest_k - 1:
            raise InputError(f"estimators pool={pool}: K={largest_k} needs at least K-1={largest_k - 1} "
                             "candidates per batch")
        learned = [c for c in merged["critics"] if c != "optimal"]
        largest_learned_k = max(learned_ks) if learned_ks else 2
        if learned and train_pool < largest_learned_k - 1:
            raise InputError(f"estimators train_pool={train_pool}: K={largest_learned_k} needs at least "
                             f"K-1={largest_learned_k - 1} candidates per training batch")
        bands = tuple(parse_band(text, "bands") for text in merged["bands"])
        balls = tuple(parse_band(f"{w_out}:0", "balls")[0] for w_out in merged["balls"])
        for beta in merged["hcl_betas"]:
            if not (isinstance(beta, int | float) and math.isfinite(beta) and beta >= 0):
                raise InputError(f"estimators hcl_betas={list(merged['hcl_betas'])}: expected numbers >= 0")
        for band in bands + tuple((w_out, 0.0) for w_out in balls):
            _check_band_size(pool, band, "pool")
        train_band = parse_band(merged["train_band"], "train_band")
        _check_band_size(train_pool, train_band, "train_pool")
        return cls(dim=int(merged["dim"]), mi=tuple(float(mi) for mi in merged["mi"]), k=ks, learned_k=learned_ks,
                   critics=tuple(merged["critics"]), bands=bands, balls=balls,
                   hcl_betas=tuple(float(beta) for beta in merged["hcl_betas"]), batches=int(merged["batches"]),
                   batch_size=int(merged["batch_size"]), pool=pool, train_steps=int(merged["train_steps"]),
                   train_pool=train_pool, train_band=train_band, profile=str(merged["profile"]))


class EstimatorsSuite(Suite):
    name = "estimators"
    protocol_version = "1"
    sample_unit = "independent batches"
    uses_checkpoints = False
    reads_data_root = False  # synthetic Gaussians only
    default_seeds = (0,)
    options = {
        "dim": 20,  # dimensions of x and y
        "mi": [2.0, 4.0, 6.0, 8.0, 10.0],  # true MI values in nats (rho = sqrt(1 - exp(-2 mi / dim)))
        "k": [16, 64, 256],  # softmax sizes K (positive + K-1 negatives) for the optimal critic
        "learned_k": [64],  # K values for the learned critics (training costs time)
        "critics": ["optimal", "learned-nce", "learned-ring"],
        "bands": ["0.1:0.1", "0.5:0.1", "1.0:0.1"],  # ring bands w_out:w_in (released config, SimCLR, anneal start)
        "balls": [0.1],  # ball outer cuts w_out
        "hcl_betas": [1.0],  # HCL concentration beta (tau+ = 0)
        "batches": 100,  # independent batches per cell (the std is over these)
        "batch_size": 64,  # anchors per batch (a batch estimate is their mean)
        "pool": 2048,  # candidates from p(y) per batch, ranked for the ring
        "train_steps": 400,  # learned critics: Adam steps
        "train_pool": 1024,  # learned critics: pool per training step
        "train_band": "0.1:0.1",  # band of the Ring training objective (annealed from w_out = 1)
        "profile": "cpu",
    }

    def parse_options(self, options: Mapping[str, Any] | EstimatorsOptions,
                      data_root: Path | None = None) -> EstimatorsOptions:
        return options if isinstance(options, EstimatorsOptions) else EstimatorsOptions.parse(options)

    def check(self, options: Mapping[str, Any] | EstimatorsOptions, data_root: Path | None,
              checkpoints: Sequence[Path]) -> None:
        self.parse_options(options)  # every check lives in EstimatorsOptions.parse

    def estimator_specs(self, options: Mapping[str, Any] | EstimatorsOptions):
        from studies.estimators.study import default_estimators

        opts = self.parse_options(options)
        return default_estimators(list(opts.bands), list(opts.balls), list(opts.hcl_betas))

    def train_objective(self, options: Mapping[str, Any] | EstimatorsOptions):
        from studies.estimators.study import EstimatorSpec

        w_out, w_in = self.parse_options(options).train_band
        return EstimatorSpec("ring", w_out=w_out, w_in=w_in)

    # ----------------------------------------------------------------- tasks and cells

    def tasks(self, options: Mapping[str, Any] | EstimatorsOptions, data_root: Path | None) -> list[Task]:
        opts = self.parse_options(options)
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
        opts = self.settings_for(cell)
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
            train_band=self.train_objective(opts).band,
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
