r"""The estimator check: NCE vs conditional NCE (Ring) where the true mutual information is known.

Data. Pairs (x, y) in R^d with independent coordinates, each coordinate a standard bivariate
Gaussian with correlation rho: y = rho * x + sqrt(1 - rho^2) * eps. Then

    I(X; Y) = -d/2 * log(1 - rho^2)

and the optimal critic is the log density ratio

    f*(x, y) = log p(y | x) / p(y)
             = -d/2 log(1 - rho^2) - |y - rho x|^2 / (2 (1 - rho^2)) + |y|^2 / 2,

with E_{p(x, y)}[f*] = I(X; Y) and E_{p(y)}[exp f*(x, y)] = 1 for every x. A learned critic (a
separable MLP f(x, y) = g(x) . h(y), trained with the NCE or the Ring objective) is the second setting.

Estimators. K counts every term of the softmax: the positive y+ ~ p(y | x) and K - 1 negatives.
Each batch draws B anchors with their positives and one pool of M candidates from the marginal p(y),
shared by the batch (a memory bank); every estimator below uses these same samples. For one anchor,

    I_hat(x) = f(x, y+) - log( 1/K * [ exp f(x, y+) + sum_{j=1}^{K-1} exp f(x, y_j) ] ),

and the batch estimate is the mean of I_hat over the B anchors. The estimators differ only in where
the negatives y_j come from:

* ``nce``: K - 1 distinct pool entries chosen uniformly at random, i.e. K - 1 i.i.d. draws from p(y)
  (InfoNCE). I_hat <= log K always, and E[I_hat] <= I(X; Y) for any critic. (pretrain's bank sampler
  draws with replacement, as the IR code does; repeated entries make the partition noisier and the
  exact bound unproven, so the estimator draws without replacement.)
* ``ring`` (CNCE): the pool is ranked by the critic score f(x, .) (rank 0 = most similar) and the
  K - 1 negatives are drawn uniformly with replacement (as the IR code; the band may hold fewer than
  K - 1 entries) from the ranks
  [floor(w_in * floor(w_out * M)), floor(w_out * M)) -- ``pretrain.samplers.ring_mask`` -- i.e. from
  q(y | x) = p(y) 1[y in S(x)] / p(S(x)), the marginal restricted to the band S(x) of critic-score
  quantiles [1 - w_out, 1 - w_in * w_out] and renormalised.
* ``ball``: the ring with w_in = 0 (the top w_out fraction).
* ``hcl`` (tau+ = 0): the same K - 1 negatives as ``nce``, reweighted by w_j proportional to
  exp(beta * f(x, y_j)) (mean weight 1), a soft conditional distribution q_beta(y | x) proportional to
  p(y) exp(beta f(x, y)) approximated by self-normalised importance sampling.

Normalisation the bound requires. The conditional estimator keeps exactly the NCE form: the positive
stays in the partition and the partition is averaged with 1/K; the negatives are NOT importance-
reweighted by p(y) / q(y | x) = p(S(x)) (that would undo the conditioning). Why this is still a lower
bound: fix x and y+, let a = exp f(x, y+) and c(x) = E_{p(y)}[exp f(x, y)]. For uniform negatives,
concavity of log (Jensen) gives

    E_p[ log(a + sum_j exp f(x, y_j)) ] <= log(a + (K - 1) c(x)).

If every y in the band satisfies exp f(x, y) >= c(x) (the band lies above the partition mean), then
pointwise log(a + sum_j exp f(x, y_j)) >= log(a + (K - 1) c(x)) for band negatives, so the CNCE
partition is larger in expectation and

    E[I_hat_ring] <= E[I_hat_nce] <= I(X; Y).

For the optimal critic c(x) = 1, so the condition is f*(x, y) >= 0 on the band. The condition is
checked per anchor and reported as ``band_condition`` (the fraction of anchors whose band's lowest
score is >= log c(x); c(x) is exact for the optimal critic and the pool mean for a learned one). For
the ball (an upper set of scores) the negatives' scores stochastically dominate p's, so
E[I_hat_ball] <= E[I_hat_nce] holds with or without the condition; the ring drops the top ranks, so
outside the condition its bound relative to NCE is an empirical question this experiment answers.

Not MI estimators here: ``dcl`` and ``hcl`` with tau+ > 0 subtract an estimate of same-class
("false negative") mass from the partition; that targets a class-conditional partition that does not
exist for Gaussian pairs, is not a lower bound on I(X; Y), and at tau+ = 0 ``dcl`` is ``nce`` itself.
``mochi`` adds synthetic negatives mixed from the hardest pool entries and the anchor's own query;
they are not draws of Y from any distribution of the form p(y) restricted to a set, and they change
the partition size, so its value bounds nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.samplers import (
    SAMPLER_CLASSES,
    SAMPLERS,
    NegativeSampler,
    build_sampler,
    ring_bounds,
    ring_mask,
    sample_from_mask,
    sampler_parameters,
)
from studies.estimators import CRITICS, NOT_MI_ESTIMATORS, task_name

# --------------------------------------------------------------------------- the Gaussian pair


@dataclass(frozen=True)
class GaussianPair:
    """d independent standard bivariate Gaussian coordinates with correlation `rho` each."""

    dim: int
    rho: float

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"rho must lie in [0, 1), got {self.rho}")

    @classmethod
    def from_mi(cls, mi: float, dim: int) -> GaussianPair:
        """The pair whose mutual information is `mi` nats: rho = sqrt(1 - exp(-2 mi / d))."""
        if mi < 0:
            raise ValueError(f"mutual information must be >= 0, got {mi}")
        return cls(dim=dim, rho=math.sqrt(1.0 - math.exp(-2.0 * mi / dim)))

    @property
    def mi(self) -> float:
        return -0.5 * self.dim * math.log1p(-self.rho**2)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.dim, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator)
        return x, self.rho * x + math.sqrt(1.0 - self.rho**2) * noise

    def sample_marginal(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.dim, generator=generator)


class OptimalCritic:
    """f*(x, y) = log p(y | x) / p(y) for a GaussianPair, in closed form."""

    def __init__(self, pair: GaussianPair):
        self.pair = pair
        self._var = 1.0 - pair.rho**2
        self._offset = -0.5 * pair.dim * math.log(self._var)

    def pair_scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) f*(x_i, y_i) for aligned rows."""
        rho = self.pair.rho
        return self._offset - ((y - rho * x) ** 2).sum(1) / (2 * self._var) + (y**2).sum(1) / 2

    def scores(self, x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """(B, M) f*(x_b, pool_m); uses |y - rho x|^2 = |y|^2 - 2 rho x.y + rho^2 |x|^2 for one matmul."""
        rho = self.pair.rho
        x_sq = (x**2).sum(1, keepdim=True)
        y_sq = (pool**2).sum(1).unsqueeze(0)
        cross = x @ pool.T
        return self._offset - (y_sq - 2 * rho * cross + rho**2 * x_sq) / (2 * self._var) + y_sq / 2

    def log_partition(self, x: torch.Tensor, pool: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B,) log E_{p(y)}[exp f*(x, y)]: exactly 0."""
        return torch.zeros(x.shape[0], dtype=scores.dtype)


class SeparableCritic(nn.Module):
    """f(x, y) = g(x) . h(y) with two small MLPs (the contrastive-learning critic shape)."""

    def __init__(self, dim: int, hidden: int = 128, embedding: int = 32):
        super().__init__()
        self.g = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                               nn.Linear(hidden, embedding))
        self.h = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                               nn.Linear(hidden, embedding))

    def pair_scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.g(x) * self.h(y)).sum(1)

    def scores(self, x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return self.g(x) @ self.h(pool).T

    def log_partition(self, x: torch.Tensor, pool: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B,) log of the pool mean of exp f: the Monte Carlo log E_{p(y)}[exp f(x, y)]."""
        return torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])


# --------------------------------------------------------------------------- estimators


# The study is class-free and fixes the band: the samplers' false-negative prior is 0 and their schedule constant.
STUDY_FIXED = {"tau_plus": 0.0, "anneal": "constant"}
SCHEDULE_PARAMS = {"anneal", "anneal_epochs", "anneal_steps"}


class EstimatorSpec:
    """One estimator: a registered negative sampler (`pretrain.samplers`) with its parameters, e.g.
    `EstimatorSpec("ring", w_out=0.1, w_in=0.1)`. The sampler object says which estimate applies (its `band`,
    its `tilt`); the study never asks its name."""

    def __init__(self, sampler: str, **params: Any):
        own = sampler_parameters(sampler)  # an unknown name lists the registered samplers
        built = build_sampler(sampler, **{key: value for key, value in STUDY_FIXED.items() if key in own} | params)
        reason = not_an_estimator(built)
        if reason:
            raise ValueError(f"{sampler!r} gives no meaningful MI estimate: {reason}")
        self.sampler = built
        self.sampler_name = sampler
        self.values = tuple(float(getattr(built.params, key)) for key in label_parameters(sampler))

    @property
    def name(self) -> str:
        """"nce", "ring[0.1,0.1]", "ball[0.1]", "hcl[1]": the sampler and the parameters the study varies."""
        return f"{self.sampler_name}[{','.join(f'{v:g}' for v in self.values)}]" if self.values else self.sampler_name

    @property
    def band(self) -> tuple[float, float] | None:
        return self.sampler.band

    @property
    def is_banded(self) -> bool:
        return self.band is not None

    def with_params(self, **changes: Any) -> EstimatorSpec:
        return EstimatorSpec(self.sampler_name, **dict(zip(label_parameters(self.sampler_name), self.values)) | changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EstimatorSpec) and (self.sampler_name, self.values) == (other.sampler_name, other.values)

    def __hash__(self) -> int:
        return hash((self.sampler_name, self.values))

    def __repr__(self) -> str:
        return f"EstimatorSpec({self.name})"


def label_parameters(sampler: str) -> tuple[str, ...]:
    """The parameters of `sampler` that an estimator's name carries: all but those the study fixes."""
    return tuple(key for key in sampler_parameters(sampler) if key not in STUDY_FIXED and key not in SCHEDULE_PARAMS)


def not_an_estimator(sampler: NegativeSampler) -> str | None:
    """Why this sampler's value bounds nothing here, or None (see the module docstring)."""
    if sampler.synthesises_negatives:
        return NOT_MI_ESTIMATORS["synthetic negatives"]
    if sampler.class_prior is not None and sampler.tilt is None and sampler.band is None:
        return NOT_MI_ESTIMATORS["debiasing only"]
    return None


def parse_estimator(name: str) -> EstimatorSpec:
    """Inverse of EstimatorSpec.name: "nce", "ring[0.1,0.1]", "ball[0.1]", "hcl[1]"."""
    text = name.strip()
    kind, _, rest = text.partition("[")
    values: list[float] = []
    if rest:
        if not rest.endswith("]"):
            raise ValueError(f"estimator {name!r}: expected kind[values], e.g. ring[0.1,0.1]")
        try:
            values = [float(v) for v in rest[:-1].split(",")]
        except ValueError:
            raise ValueError(f"estimator {name!r}: band values must be numbers") from None
    keys = label_parameters(kind)
    if len(values) != len(keys):
        raise ValueError(f"estimator {name!r}: {kind} takes {len(keys)} value(s), got {len(values)}")
    return EstimatorSpec(kind, **dict(zip(keys, values)))


def contrastive_estimate(positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """(B,) f+ - log(1/K * (exp f+ + sum_j exp f_j)) with K = 1 + number of negatives; <= log K."""
    k = negatives.shape[1] + 1
    logits = torch.cat([positive.unsqueeze(1), negatives], dim=1)
    return positive - torch.logsumexp(logits, dim=1) + math.log(k)


def tilted_estimate(positive: torch.Tensor, negatives: torch.Tensor, beta: float) -> torch.Tensor:
    """HCL with tau+ = 0: the partition's negative part is (K-1) * sum_j w_j exp f_j, w = softmax(beta f)."""
    k = negatives.shape[1] + 1
    log_negative_mass = (
        math.log(k - 1) + torch.logsumexp((1 + beta) * negatives, dim=1) - torch.logsumexp(beta * negatives, dim=1)
    )
    return positive - torch.logaddexp(positive, log_negative_mass) + math.log(k)


@dataclass
class BatchEstimates:
    """Per-batch estimates (each the mean over the batch's anchors) for every estimator."""

    values: dict[str, list[float]] = field(default_factory=dict)
    # batch mean of the log-partition term log(1/K * sum exp f) = f+ - I_hat, to split the variance
    log_partition: dict[str, list[float]] = field(default_factory=dict)
    band_condition: dict[str, list[float]] = field(default_factory=dict)  # fraction of anchors per batch

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)


def estimate_batch(
    critic: OptimalCritic | SeparableCritic,
    x: torch.Tensor,
    y_positive: torch.Tensor,
    pool: torch.Tensor,
    k: int,
    estimators: Sequence[EstimatorSpec],
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-anchor estimates (B,) for each estimator on the same anchors, positives and pool.

    Also returns, per banded estimator, a (B,) bool: whether the band's lowest score is >= log c(x).
    """
    if k < 2:
        raise ValueError(f"K must be >= 2 (the positive plus at least one negative), got {k}")
    if k - 1 > pool.shape[0]:
        raise ValueError(f"K={k} needs at least K-1={k - 1} pool candidates, got {pool.shape[0]}")
    scores = critic.scores(x, pool)
    positive = critic.pair_scores(x, y_positive)
    # K-1 distinct pool entries per anchor (a uniformly random subset): exactly i.i.d. draws from p(y)
    uniform = torch.rand(x.shape[0], pool.shape[0], generator=generator).topk(k - 1, dim=1, sorted=False).indices
    uniform_negatives = scores.gather(1, uniform)
    log_partition = None
    out: dict[str, torch.Tensor] = {}
    condition: dict[str, torch.Tensor] = {}
    for spec in estimators:
        if spec.band is None and spec.sampler.tilt is None:
            out[spec.name] = contrastive_estimate(positive, uniform_negatives)
        elif spec.band is None:
            out[spec.name] = tilted_estimate(positive, uniform_negatives, spec.sampler.tilt)
        else:
            w_out, w_in = spec.band
            mask = ring_mask(scores, w_out, w_in)
            chosen = sample_from_mask(mask, k - 1, generator)
            out[spec.name] = contrastive_estimate(positive, scores.gather(1, chosen))
            if log_partition is None:
                log_partition = critic.log_partition(x, pool, scores)
            band_floor = scores.masked_fill(~mask, math.inf).min(dim=1).values
            condition[spec.name] = band_floor >= log_partition
    return out, condition


def run_estimates(
    critic: OptimalCritic | SeparableCritic,
    pair: GaussianPair,
    k: int,
    estimators: Sequence[EstimatorSpec],
    num_batches: int,
    batch_size: int,
    pool_size: int,
    generator: torch.Generator,
    progress: bool = False,
) -> BatchEstimates:
    """`num_batches` independent batches (fresh anchors, positives and pool each)."""
    for spec in estimators:
        if spec.is_banded:
            lower, upper = ring_bounds(pool_size, *spec.band)
            if upper - lower < 1:
                raise ValueError(
                    f"estimator {spec.name}: a pool of {pool_size} leaves an empty band (ranks [{lower}, {upper}))"
                )
    result = BatchEstimates()
    batches: Iterable[int] = range(num_batches)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"estimators K={k} I={pair.mi:g}", leave=False)
    with torch.no_grad():
        for _ in batches:
            x, y = pair.sample(batch_size, generator)
            pool = pair.sample_marginal(pool_size, generator)
            per_anchor, condition = estimate_batch(critic, x, y, pool, k, estimators, generator)
            positive_mean = float(critic.pair_scores(x, y).mean())
            for name, values in per_anchor.items():
                result.add(name, float(values.mean()))
                result.log_partition.setdefault(name, []).append(positive_mean - float(values.mean()))
            for name, held in condition.items():
                result.band_condition.setdefault(name, []).append(float(held.float().mean()))
    return result


# --------------------------------------------------------------------------- learned critic


def train_critic(
    pair: GaussianPair,
    objective: EstimatorSpec,
    k: int,
    steps: int,
    batch_size: int,
    pool_size: int,
    generator: torch.Generator,
    lr: float = 2e-3,
    hidden: int = 128,
    embedding: int = 32,
    anneal_fraction: float = 0.5,
    progress: bool = False,
) -> tuple[SeparableCritic, list[float]]:
    """Train a SeparableCritic by maximising `objective` (nce or ring) on fresh samples each step.

    A banded objective anneals its outer cut linearly from 1.0 to `objective.w_out` over the first
    `anneal_fraction` of the steps (the paper's schedule; a ring fixed at [1%, 10%] from the start
    lets a random critic collapse to a constant).

    Returns the critic and its training estimate per step (the negated loss).
    """
    if objective.sampler.tilt is not None:
        raise ValueError(f"a critic is trained with uniform or banded negatives, not the reweighted {objective.name}")
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    critic = SeparableCritic(pair.dim, hidden=hidden, embedding=embedding)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
    history: list[float] = []
    iterator: Iterable[int] = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"train {objective.name} critic I={pair.mi:g}", leave=False)
    for step in iterator:
        x, y = pair.sample(batch_size, generator)
        pool = pair.sample_marginal(pool_size, generator)
        current = objective
        if objective.is_banded and anneal_fraction > 0:
            # the paper's annealing: the outer cut shrinks linearly from 1.0 to its target
            progress_fraction = min(1.0, step / max(1.0, anneal_fraction * steps))
            w_out = 1.0 - (1.0 - objective.band[0]) * progress_fraction
            current = objective.with_params(w_out=w_out)
        estimates, _ = estimate_batch(critic, x, y, pool, k, [current], generator)
        loss = -estimates[current.name].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(-float(loss.detach()))
    critic.eval()
    return critic, history


# --------------------------------------------------------------------------- one sweep setting


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: critic x true MI x K (all estimators share its samples)."""

    critic: str
    mi: float
    k: int

    @property
    def name(self) -> str:
        return task_name(self.critic, self.mi, self.k)


@dataclass
class SettingResult:
    setting: Setting
    true_mi: float
    rho: float
    estimates: BatchEstimates
    train_history: list[float] | None
    seconds: float

    def summary(self) -> dict[str, dict[str, float]]:
        """Per estimator: mean, bias (mean - true MI), std over batches, n, log-partition std, band_condition."""
        rows = {}
        for name, values in self.estimates.values.items():
            tensor = torch.tensor(values, dtype=torch.float64)
            row = {
                "mean": float(tensor.mean()),
                "bias": float(tensor.mean()) - self.true_mi,
                "std": float(tensor.std(unbiased=False)),
                "n": len(values),
            }
            if name in self.estimates.log_partition:
                row["log_partition_std"] = float(torch.tensor(self.estimates.log_partition[name]).std(unbiased=False))
            if name in self.estimates.band_condition:
                row["band_condition"] = float(torch.tensor(self.estimates.band_condition[name]).mean())
            rows[name] = row
        return rows


def default_estimators(bands: Sequence[tuple[float, float]], balls: Sequence[float], betas: Sequence[float]) -> list[
    EstimatorSpec
]:
    """NCE, the rings (w_out, w_in), the balls (w_out) and HCL (beta): the suite's sweep."""
    specs = [EstimatorSpec("nce")]
    specs += [EstimatorSpec("ring", w_out=w_out, w_in=w_in) for w_out, w_in in bands]
    specs += [EstimatorSpec("ball", w_out=w_out) for w_out in balls]
    specs += [EstimatorSpec("hcl", beta=beta) for beta in betas]
    return specs


def run_setting(
    setting: Setting,
    estimators: Sequence[EstimatorSpec],
    *,
    dim: int = 20,
    num_batches: int = 100,
    batch_size: int = 64,
    pool_size: int = 4096,
    train_steps: int = 300,
    train_band: tuple[float, float] = (0.1, 0.1),
    train_pool_size: int = 1024,
    seed: int = 0,
    progress: bool = False,
) -> SettingResult:
    """Build the critic of `setting` (closed form or trained) and run every estimator on shared batches."""
    if setting.critic not in CRITICS:
        raise ValueError(f"unknown critic {setting.critic!r}; valid: {', '.join(CRITICS)}")
    start = time.perf_counter()
    pair = GaussianPair.from_mi(setting.mi, dim)
    generator = torch.Generator().manual_seed(setting_seed(seed, setting.name))
    history = None
    critic: OptimalCritic | SeparableCritic
    if setting.critic == "optimal":
        critic = OptimalCritic(pair)
    else:
        sampler = setting.critic.removeprefix("learned-")  # learned-nce, learned-ring: the training objective
        band = {"w_out": train_band[0], "w_in": train_band[1]}
        objective = EstimatorSpec(sampler, **{key: value for key, value in band.items() if key in sampler_parameters(sampler)})
        critic, history = train_critic(
            pair, objective, setting.k, train_steps, batch_size, train_pool_size, generator, progress=progress
        )
    estimates = run_estimates(critic, pair, setting.k, estimators, num_batches, batch_size, pool_size, generator,
                              progress=progress)
    return SettingResult(setting, pair.mi, pair.rho, estimates, history, time.perf_counter() - start)


def setting_seed(seed: int, name: str) -> int:
    """A seed that depends on the run seed and the setting's name, identical on every machine."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


# --------------------------------------------------------------------------- table and plot


def summary_frame(results: Iterable[SettingResult]):
    """Tidy pandas frame: one row per setting x estimator (critic, true_mi, K, estimator, mean, bias, std...)."""
    import pandas as pd

    rows = []
    for result in results:
        for name, row in result.summary().items():
            rows.append({"critic": result.setting.critic, "true_mi": result.true_mi, "rho": result.rho,
                         "K": result.setting.k, "log_K": math.log(result.setting.k), "estimator": name, **row})
    return pd.DataFrame(rows)


def plot_estimates(frame, path: Path, title: str | None = None) -> Path:
    """Estimate vs true MI, mean +- std band per estimator; one panel per (critic, K) that has results.

    `frame` needs columns critic, K, true_mi, estimator, mean, std (as `summary_frame` builds).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = {"critic", "K", "true_mi", "estimator", "mean", "std"} - set(frame.columns)
    if missing:
        raise ValueError(f"plot_estimates: frame lacks columns {sorted(missing)}")
    critic_order = {name: i for i, name in enumerate(CRITICS)}
    panels = sorted({(c, int(k)) for c, k in zip(frame["critic"], frame["K"])},
                    key=lambda ck: (critic_order.get(ck[0], len(CRITICS)), ck[0], ck[1]))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    estimators = list(dict.fromkeys(frame["estimator"]))
    colours = _estimator_colours(estimators)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.7 * rows), squeeze=False, sharex=True,
                             sharey=True)
    top = float(frame["true_mi"].max())
    for index, (critic, k) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        ax.plot([0, top], [0, top], color="black", lw=1, label="true MI")
        ax.axhline(math.log(k), color="grey", lw=1, ls=":", label="log K")
        panel = frame[(frame["critic"] == critic) & (frame["K"] == k)]
        for name in estimators:
            line = panel[panel["estimator"] == name].sort_values("true_mi")
            if line.empty:
                continue
            ax.plot(line["true_mi"], line["mean"], marker="o", ms=3, color=colours[name], label=name)
            ax.fill_between(line["true_mi"], line["mean"] - line["std"], line["mean"] + line["std"],
                            color=colours[name], alpha=0.2, lw=0)
        ax.set_title(f"{critic} critic, K={k}", fontsize=10)
        ax.set_xlabel("true MI (nats)")
        ax.tick_params(labelbottom=True, labelleft=True)
        ax.set_ylabel("estimate (nats), mean ± std")
        ax.grid(alpha=0.3)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=9)
    fig.suptitle(title or "MI estimates on correlated Gaussians (band: std over independent batches)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# one colour map per sampler, in registry order (the baseline is drawn black)
FAMILY_COLOURS = dict(zip(SAMPLERS, ("Greys", "Reds", "Blues", "Purples", "Greens", "Oranges")))


def _estimator_colours(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    by_family: dict[str, list[str]] = {}
    for name in names:
        by_family.setdefault(name.partition("[")[0], []).append(name)
    colours = {}
    for family, members in by_family.items():
        baseline = family in SAMPLER_CLASSES and not SAMPLER_CLASSES[family].hard_negative()
        cmap = matplotlib.colormaps[FAMILY_COLOURS.get(family, "Purples")]
        for i, name in enumerate(members):
            colours[name] = "black" if baseline else cmap(0.9 - 0.5 * i / max(len(members) - 1, 1))
    return colours


# --------------------------------------------------------------------------- stand-alone sweep


def sweep(
    critics: Sequence[str],
    mis: Sequence[float],
    ks: Sequence[int],
    estimators: Sequence[EstimatorSpec],
    on_result: Callable[[SettingResult], None] | None = None,
    **kwargs: Any,
) -> list[SettingResult]:
    results = []
    for critic in critics:
        for mi in mis:
            for k in ks:
                result = run_setting(Setting(critic, mi, k), estimators, **kwargs)
                results.append(result)
                if on_result:
                    on_result(result)
    return results


def format_table(frame, estimators: Mapping[str, Any] | None = None) -> str:
    """Markdown table: per critic x K x true MI, 'mean (bias) +- std' per estimator."""
    lines = []
    names = list(dict.fromkeys(frame["estimator"])) if estimators is None else list(estimators)
    lines.append("| critic | K | true MI | " + " | ".join(names) + " |")
    lines.append("|---|---|---|" + "---|" * len(names))
    for (critic, k, mi), group in frame.groupby(["critic", "K", "true_mi"], sort=True):
        cells = []
        for name in names:
            row = group[group["estimator"] == name]
            if row.empty:
                cells.append("")
                continue
            r = row.iloc[0]
            cells.append(f"{r['mean']:.2f} ({r['bias']:+.2f}) ± {r['std']:.3f}")
        lines.append(f"| {critic} | {k} | {mi:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
