"""The MI estimator study: is conditional NCE (Ring) a lower bound on I(X;Y) with more bias and less
variance than NCE? The experiment is `studies.estimators.study` (torch); this module holds the names
and helpers that planning needs without torch, shared by the study and its suite
(`bench.suites.estimators`, `python -m bench.run --suite estimators`).
"""

from __future__ import annotations

import re
from typing import Any

CRITICS = ("optimal", "learned-nce", "learned-ring")
NOT_MI_ESTIMATORS = {  # why a sampler's value bounds nothing here, by what the sampler does
    "debiasing only": "tau+ > 0 removes assumed same-class mass from the partition: not a bound on I(X;Y) for "
    "class-free Gaussian pairs; tau+ = 0 is nce itself",
    "synthetic negatives": "synthetic mixed negatives are not draws from p(y) restricted to a set and change the "
    "partition size, so the value bounds nothing",
}


def task_name(critic: str, mi: float, k: int) -> str:
    """The task (and Setting) name of one sweep point."""
    return f"{critic}/mi={mi:g}/K={k}"


TASK_NAME = re.compile(r"^(?P<critic>[^/]+)/mi=(?P<mi>[^/]+)/K=(?P<k>\d+)$")


def estimates_frame(ranked: Any):
    """Leaderboard rows -> one row per (critic, K, true MI, estimator) with mean, std, bias, n, ci95.

    `std` is the Metric's std: over batches for one seed, over seed means when several seeds ran.
    """
    import pandas as pd

    rows = []
    for _, row in ranked.iterrows():
        match = TASK_NAME.match(str(row["task"]))
        kind, _, estimator = str(row["metric"]).partition("/")
        if match is None or kind != "mi":
            continue
        true_mi = float(match["mi"])
        rows.append({"critic": match["critic"], "K": int(match["k"]), "true_mi": true_mi, "estimator": estimator,
                     "mean": float(row["mean"]), "bias": float(row["mean"]) - true_mi, "std": float(row["std"]),
                     "n": int(row["n"]), "ci95": float(row["ci95"])})
    frame = pd.DataFrame(rows, columns=["critic", "K", "true_mi", "estimator", "mean", "bias", "std", "n", "ci95"])
    from pretrain.samplers import (
        SAMPLERS,  # registry order: the baseline first, then each hard-negative sampler
    )

    family = {name: index for index, name in enumerate(SAMPLERS)}
    order = sorted(set(frame["estimator"]), key=lambda name: (family.get(name.partition("[")[0], len(family)), name))
    frame["estimator"] = pd.Categorical(frame["estimator"], categories=order, ordered=True)
    frame = frame.sort_values(["critic", "K", "true_mi", "estimator"], ignore_index=True)
    frame["estimator"] = frame["estimator"].astype(str)
    return frame
