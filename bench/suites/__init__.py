"""The suite registry: suite name -> "module:Class", imported only when the suite is used.

Keeping the classes lazy keeps `python -m bench.run --help` and `--dry-run` instant: TensorFlow,
Detectron2 and friends are imported by the suite modules that need them, never here.
A suite may also be named by its import path directly (`--suite mypkg.mysuite:MySuite`).
"""

from __future__ import annotations

import importlib

from bench.suite import InputError, Suite

SUITES: dict[str, str] = {
    "knn": "bench.suites.knn:KnnSuite",
    "pretrain": "bench.suites.pretrain:PretrainSuite",
    "meta_dataset": "bench.suites.meta_dataset:MetaDatasetSuite",
    "coco_det": "bench.suites.coco_det:CocoDetSuite",
    "voc_det": "bench.suites.voc_det:VocDetSuite",
    "linear": "bench.suites.linear:LinearSuite",
    "estimators": "bench.suites.estimators:EstimatorsSuite",
    "selftest": "bench.suites.selftest:SelfTestSuite",
}


def suite_names() -> list[str]:
    return sorted(SUITES)


def suite_class_path(name: str) -> str:
    if name in SUITES:
        return SUITES[name]
    if ":" in name:  # an import path given directly
        return name
    raise InputError(f"unknown suite {name!r}; valid suites: {', '.join(suite_names())}")


def load_suite_class(name: str) -> type[Suite]:
    """Import and return the suite class registered under `name` (or the class at "module:Class")."""
    path = suite_class_path(name)
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise InputError(f"suite {name!r} is registered as {path} but module {module_name} does not exist yet") from None
        raise
    cls = getattr(module, class_name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Suite)):
        raise InputError(f"suite {name!r}: {path} is not a bench.suite.Suite subclass")
    return cls


def load_suite(name: str) -> Suite:
    return load_suite_class(name)()
