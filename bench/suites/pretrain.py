"""pretrain: train a grid of named recipes, one cell per recipe x seed, each producing an encoder.

The encoders land in the cell folders (`cells/<id>/train/encoder.pt`); the cell's result records
the path (info.encoder), the final kNN monitor accuracy and the final loss from the training log.
A requeued cell resumes from the training state in its own folder (pretrain.train.train_recipe).
Evaluation suites run on the trained encoders with `python -m bench.run --suite pretrain --then knn ks=5`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.options import SuiteOptions, option
from bench.suite import Cell, CellOutput, InputError, Metric, Suite, Task


def _some_recipe(recipes: tuple[str, ...]) -> tuple[str, ...]:
    if not recipes:
        raise ValueError("expected at least one recipe name")
    return recipes


@dataclass(frozen=True)
class PretrainOptions(SuiteOptions):
    recipes: tuple[str, ...] = option(("digits_default_nce", "digits_default_ring"),
                                      "comma list of recipes (python -m pretrain.train --list)", check=_some_recipe)
    overrides: dict[str, Any] = option({}, 'JSON object of config overrides applied to every recipe, e.g. {"epochs": 2}')

    def config_overrides(self, data_root: Path | None, seed: int | None) -> dict[str, Any]:
        """The overrides of one recipe run: the option's, the data folder (unless given) and the seed."""
        overrides = dict(self.overrides)
        if data_root is not None:
            overrides.setdefault("data.root", str(data_root))
        if seed is not None:
            overrides["seed"] = int(seed)
        return overrides


def encoder_path(cell_folder: Path) -> Path:
    return Path(cell_folder) / "train" / "encoder.pt"


class PretrainSuite(Suite):
    name = "pretrain"
    protocol_version = "1"
    uses_checkpoints = False
    produces_checkpoints = True
    default_seeds = (0,)
    Options = PretrainOptions

    def check(self, options: PretrainOptions, data_root: Path | None, checkpoints: Sequence[Path]) -> None:
        from pretrain.recipes import recipe_config

        for name in options.recipes:
            recipe_config(name, options.config_overrides(data_root, seed=None))  # ConfigError names the problem

    def produced_checkpoint(self, result: Mapping[str, Any]) -> Path | None:
        encoder = result.get("info", {}).get("encoder")
        return Path(encoder) if encoder else None

    def dataset_fingerprints(self, options: PretrainOptions, data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        """Each recipe's pretraining set (its `data.name` under its `data.root`), like linear's datasets."""
        from bench.fingerprint import standard_dataset_fingerprint
        from pretrain.recipes import recipe_config

        fingerprints = {}
        for task in tasks:
            data = recipe_config(task.params["recipe"], options.config_overrides(data_root, seed=None)).data
            if data.name != "digits" and not data.root:
                raise InputError(f"pretrain recipe {task.params['recipe']} reads {data.name}: give its folder with "
                                 "--data-root (or data.root in overrides)")
            fingerprints[task.name] = standard_dataset_fingerprint(data.name, Path(data.root) if data.root else None)
        return fingerprints

    def tasks(self, options: PretrainOptions, data_root: Path | None) -> list[Task]:
        return [Task(name=name, params={"recipe": name, "overrides": dict(options.overrides)}, profile="pretrain")
                for name in options.recipes]

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        from pretrain.train import train_recipe

        started = time.time()
        overrides = cell.settings.config_overrides(cell.data_root, cell.seed)
        path = train_recipe(cell.task.params["recipe"], overrides, Path(workdir) / "train", show_progress=True)
        records = []
        log = Path(workdir) / "train" / "metrics.jsonl"
        if log.exists():
            for line in log.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        metrics: dict[str, Metric] = {}
        knn = [r["knn_top1"] for r in records if "knn_top1" in r]
        if knn:
            metrics["knn/top1"] = Metric.scalar(100.0 * float(knn[-1]))
        if records and "loss" in records[-1]:
            metrics["loss/final"] = Metric.scalar(float(records[-1]["loss"]), higher_is_better=False)
        metrics["time/train_min"] = Metric.scalar((time.time() - started) / 60.0, higher_is_better=False)
        return CellOutput(metrics=metrics, info={"engine": "pretrain.train", "encoder": str(Path(path).resolve()),
                                                 "epochs_logged": len(records)})
