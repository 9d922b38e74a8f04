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

from bench.suite import Cell, CellOutput, InputError, Metric, Suite, Task


@dataclass(frozen=True)
class PretrainOptions:
    recipes: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...]  # config overrides applied to every recipe, in the given order

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> PretrainOptions:
        merged = PretrainSuite.complete_options(options)
        recipes = tuple(merged["recipes"])
        if not recipes:
            raise InputError("pretrain recipes=: expected at least one recipe name")
        overrides = merged["overrides"]
        if not isinstance(overrides, Mapping):
            raise InputError(f"pretrain overrides={overrides!r}: expected a JSON object of config overrides, "
                             'e.g. {"epochs": 2}')
        return cls(recipes=recipes, overrides=tuple(overrides.items()))

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
    options = {
        "recipes": ["digits_default_nce", "digits_default_ring"],  # see python -m pretrain.train --list
        "overrides": {},  # JSON object of config overrides applied to every recipe, e.g. {"epochs": 2}
    }

    def parse_options(self, options: Mapping[str, Any] | PretrainOptions,
                      data_root: Path | None = None) -> PretrainOptions:
        return options if isinstance(options, PretrainOptions) else PretrainOptions.parse(options)

    def check(self, options: Mapping[str, Any] | PretrainOptions, data_root: Path | None,
              checkpoints: Sequence[Path]) -> None:
        from pretrain.recipes import recipe_config

        opts = self.parse_options(options)
        for name in opts.recipes:
            recipe_config(name, opts.config_overrides(data_root, seed=None))  # ConfigError names the problem

    def produced_checkpoint(self, result: Mapping[str, Any]) -> Path | None:
        encoder = result.get("info", {}).get("encoder")
        return Path(encoder) if encoder else None

    def dataset_fingerprints(self, options: Mapping[str, Any] | PretrainOptions, data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        """Each recipe's pretraining set (its `data.name` under its `data.root`), like linear's datasets."""
        from bench.fingerprint import standard_dataset_fingerprint
        from pretrain.recipes import recipe_config

        opts = self.parse_options(options)
        fingerprints = {}
        for task in tasks:
            data = recipe_config(task.params["recipe"], opts.config_overrides(data_root, seed=None)).data
            if data.name != "digits" and not data.root:
                raise InputError(f"pretrain recipe {task.params['recipe']} reads {data.name}: give its folder with "
                                 "--data-root (or data.root in overrides)")
            fingerprints[task.name] = standard_dataset_fingerprint(data.name, Path(data.root) if data.root else None)
        return fingerprints

    def tasks(self, options: Mapping[str, Any] | PretrainOptions, data_root: Path | None) -> list[Task]:
        opts = self.parse_options(options)
        return [Task(name=name, params={"recipe": name, "overrides": dict(opts.overrides)}, profile="pretrain")
                for name in opts.recipes]

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        from pretrain.train import train_recipe

        started = time.time()
        overrides = self.settings_for(cell).config_overrides(cell.data_root, cell.seed)
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
