"""Evaluate a pretraining run's encoders as they are published.

    python -m bench.run --suite knn --follow runs/pretrain/moco_ring_cifar10 [--follow ...]

A pretraining run folder (`python -m pretrain.train --out DIR`, or a pretraining cell's `train/`
folder) receives `encoder_e{epoch:04d}.pt` snapshots every `snapshot_every` epochs and `encoder.pt`
at the end, each published atomically. The follower plans the suite's cells for every encoder
already there, then polls the folders and submits the cells of each new encoder (one submission per
encoder and suite, through the chosen executor), until every followed run has written its final
encoder, or has stopped (its pretraining cell failed, or nothing in the folder changed for the idle
limit), and every encoder's cells are done.

Restarting is safe because the result store decides what to submit: a killed follower started
again keeps done cells, watches cells owned by live jobs and submits only the rest.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bench.execute import plan_suite, run_plan
from bench.plan import Plan, parse_seeds, parse_suite_options
from bench.store import CellFolder
from bench.suite import InputError
from slurm.executors import Execution
from slurm.profiles import ResourceProfile

# pretrain.train's file names (repeated here so the runner does not import torch to read them)
FINAL_ENCODER = "encoder.pt"
SNAPSHOT_GLOB = "encoder_e*.pt"
RUN_MARKERS = ("config.json", "train.state.pt", FINAL_ENCODER)


def published_encoders(folder: Path) -> list[Path]:
    """The snapshots in epoch order, then encoder.pt; only complete files (temporaries start with a dot)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    snapshots = sorted(p for p in folder.glob(SNAPSHOT_GLOB) if p.is_file())
    final = folder / FINAL_ENCODER
    return snapshots + ([final] if final.is_file() else [])


def snapshots_of(encoder: Path) -> list[Path]:
    """The snapshots published beside a final encoder.pt, in epoch order (none for other files)."""
    encoder = Path(encoder)
    if encoder.name != FINAL_ENCODER:
        return []
    return [p for p in published_encoders(encoder.parent) if p.name != FINAL_ENCODER]


def check_run_folder(folder: Path) -> Path:
    """A folder to follow must exist and look like a pretraining run; say what was expected if not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--follow {folder}: no such folder (expected a pretraining run folder, "
                         "the --out of python -m pretrain.train)")
    if not any((folder / name).exists() for name in RUN_MARKERS) and not published_encoders(folder):
        raise InputError(f"--follow {folder}: not a pretraining run folder (none of "
                         f"{', '.join(RUN_MARKERS)} or {SNAPSHOT_GLOB} inside)")
    return folder


def last_activity(folder: Path) -> float:
    """The newest modification time in the folder (training writes its state every epoch)."""
    try:
        times = [entry.stat().st_mtime for entry in Path(folder).iterdir()]
    except OSError:
        return 0.0
    return max(times, default=0.0)


@dataclass
class FollowedRun:
    folder: Path
    # why the run will publish nothing more (e.g. its pretraining cell failed), or None while it may
    stopped: Callable[[], str | None] | None = None
    idle_limit: bool = True  # stop after `idle_s` without any change in the folder
    evaluate_final: bool = True  # False: snapshots only (something else evaluates encoder.pt)
    seen: set[Path] = field(default_factory=set)
    finished: bool = False
    outcome: str = ""  # "final encoder" or why following stopped early


@dataclass
class FollowSummary:
    encoders: int = 0
    submitted: int = 0
    kept: int = 0
    watched: int = 0
    states: Counter = field(default_factory=Counter)
    stopped_early: list[str] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.states.get("failed", 0)


class Follower:
    """Plan and submit `suites` on each encoder the followed runs publish; see the module docstring."""

    def __init__(self, suites: Sequence[str], runs: Sequence[FollowedRun], execution: Execution,
                 profiles: dict[str, ResourceProfile], *, results_root: Path, data_root: Path | None = None,
                 seeds: Sequence[int] | None = None, option_pairs: dict[str, Sequence[str]] | None = None,
                 max_parallel: int | None = None, force: bool = False, wait: bool = True, progress: bool = False,
                 stream: TextIO, poll_s: float = 10.0, idle_s: float = 6 * 3600.0):
        from bench.suites import load_suite

        self.suites = {name: load_suite(name) for name in suites}
        for name, suite in self.suites.items():
            if not suite.uses_checkpoints:
                raise InputError(f"--follow: suite {name} evaluates no checkpoint")
            parse_suite_options(suite, (option_pairs or {}).get(name, ()))  # a bad key=value fails before anything runs
        self.runs = list(runs)
        self.execution, self.profiles = execution, profiles
        self.results_root, self.data_root = Path(results_root), data_root
        self.seeds = list(seeds) if seeds else None
        self.option_pairs = {name: list((option_pairs or {}).get(name, ())) for name in suites}
        self.max_parallel, self.force, self.wait, self.progress = max_parallel, force, wait, progress
        self.stream, self.poll_s, self.idle_s = stream, poll_s, idle_s
        self.summary = FollowSummary()
        self._prepared: set[str] = set()
        self._encoders: dict[str, list[Path]] = {name: [] for name in suites}

    def say(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def plan_for(self, name: str, encoders: Sequence[Path]) -> Plan:
        """The suite's plan on these encoders; its shared inputs are prepared on the first plan only."""
        plan = plan_suite(name, results_root=self.results_root, option_pairs=self.option_pairs[name],
                          checkpoint_specs=[str(p) for p in encoders], data_root=self.data_root, seeds=self.seeds,
                          prepare=name not in self._prepared)
        self._prepared.add(name)
        return plan

    def evaluate(self, encoder: Path) -> None:
        """One submission per suite for this encoder; executors whose jobs live with the runner (local, debug)
        wait for its cells, a scheduler's (SLURM) does not."""
        self.summary.encoders += 1
        for name in self.suites:
            plan = self.plan_for(name, [encoder])
            summary = run_plan(plan, execution=self.execution, profiles=self.profiles, max_parallel=self.max_parallel,
                               force=self.force, wait=not self.execution.jobs_outlive_runner, progress=self.progress,
                               stream=self.stream).summary
            self._encoders[name].append(encoder)
            self.summary.submitted += summary.submitted
            self.summary.kept += summary.skipped_done
            self.summary.watched += summary.adopted
            self.say(f"follow: {name} on {encoder}: submitted {summary.submitted}, kept {summary.skipped_done}, "
                     f"watched {summary.adopted}")

    def _evaluate_new(self, run: FollowedRun) -> None:
        for encoder in published_encoders(run.folder):
            if encoder not in run.seen:
                run.seen.add(encoder)
                if run.evaluate_final or encoder.name != FINAL_ENCODER:
                    self.evaluate(encoder)

    def _poll_run(self, run: FollowedRun) -> None:
        self._evaluate_new(run)
        if (run.folder / FINAL_ENCODER).is_file():
            run.finished, run.outcome = True, "final encoder"
            return
        reason = run.stopped() if run.stopped is not None else None
        if reason is None and run.idle_limit and time.time() - max(last_activity(run.folder), self._started) > self.idle_s:
            reason = f"nothing changed in the folder for {self.idle_s / 60:.0f} min"
        if reason is not None:
            self._evaluate_new(run)  # anything published just before it stopped
            run.finished, run.outcome = True, reason
            self.summary.stopped_early.append(f"{run.folder}: {reason}")
            self.say(f"follow: stopped following {run.folder} before its final encoder: {reason}")

    def run(self) -> FollowSummary:
        self._started = time.time()
        waiting_said = False
        while True:
            for run in self.runs:
                if not run.finished:
                    self._poll_run(run)
            if all(run.finished for run in self.runs):
                break
            if not waiting_said:
                pending = [str(r.folder) for r in self.runs if not r.finished]
                self.say(f"follow: waiting for new encoders in {', '.join(pending)} (every {self.poll_s:g} s)")
                waiting_said = True
            time.sleep(self.poll_s)
        self._finish()
        return self.summary

    def _finish(self) -> None:
        """Collect the final states; with a scheduler (SLURM), watch the cells still in flight when waiting."""
        for name, encoders in self._encoders.items():
            if not encoders:
                continue
            plan = self.plan_for(name, encoders)
            self.summary.plans.append(plan)
            if self.execution.jobs_outlive_runner and self.wait:
                watch = dataclasses.replace(plan, cells=[c for c in plan.cells  # failures were reported once
                                                         if plan.store.cell(c.cell_id).state().state != "failed"])
                run_plan(watch, execution=self.execution, profiles=self.profiles, max_parallel=self.max_parallel,
                         wait=True, progress=self.progress, stream=self.stream)
            self.summary.states.update(plan.store.cell(c.cell_id).state().state for c in plan.cells)


def pretrain_cell_stopped(folder: CellFolder, still_running: Callable[[], bool] | None = None) -> Callable[[], str | None]:
    """For a pretraining cell's train/ folder: why it will publish nothing more, or None while it may."""
    from bench.runner import owner_alive, recorded_jobs
    from slurm.executors import LiveJobs

    def stopped() -> str | None:
        state = folder.state()
        if state.state == "failed":
            return f"pretraining cell {folder.cell_id} failed: {state.detail}"
        if state.state == "done":
            return f"pretraining cell {folder.cell_id} finished without {FINAL_ENCODER}"
        if still_running is not None and not still_running():
            return f"pretraining of cell {folder.cell_id} ended without {FINAL_ENCODER}"
        owner = folder.submitted()
        if state.state in ("submitted", "running") and owner:
            if not owner_alive(owner, LiveJobs.query(recorded_jobs([owner]))):
                return f"the job of pretraining cell {folder.cell_id} ended without a result"
        return None

    return stopped


def follow_pretraining(pretrain_plan: Plan, run_pretraining: Callable[[], object], then: Sequence[str],
                       execution: Execution,
                       profiles: dict[str, ResourceProfile], *, in_background: bool, evaluate_final: bool = True,
                       **follower_kwargs):
    """`--suite pretrain --then SUITES`: evaluate each cell's snapshots while it trains.

    `run_pretraining` runs (local) or watches (SLURM) the pretraining cells; with `in_background` it
    runs in a thread while this thread follows the cells' train/ folders. `evaluate_final=False`
    leaves the final encoders to the caller (SLURM's afterok follow-up job). Returns
    (what run_pretraining returned, the FollowSummary)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = run_pretraining()
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread below
            outcome["error"] = error

    thread = threading.Thread(target=target, name="pretraining", daemon=True)
    if in_background:
        thread.start()
    runs = []
    for planned in pretrain_plan.cells:
        cell = pretrain_plan.store.cell(planned.cell_id)
        runs.append(FollowedRun(cell.path / "train", idle_limit=False, evaluate_final=evaluate_final,
                                stopped=pretrain_cell_stopped(cell, thread.is_alive if in_background else None)))
    follower = Follower(then, runs, execution, profiles, results_root=pretrain_plan.store.root,
                        data_root=pretrain_plan.data_root, **follower_kwargs)
    summary = follower.run()
    if in_background:
        thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value"), summary


def follow_command(args, execution: Execution, profiles: dict[str, ResourceProfile], results_root: Path,
                   stream: TextIO) -> int:
    """`python -m bench.run --suite S --follow DIR ...`: exit 0 when every followed run reached its final
    encoder and every cell is done, 1 otherwise, 2 for bad input."""
    if args.checkpoints or args.then:
        raise InputError("--follow evaluates the encoders a pretraining run publishes; drop --checkpoints/--then")
    from bench.suites import load_suite

    if not load_suite(args.suite).uses_checkpoints:
        raise InputError(f"--follow: suite {args.suite} evaluates no checkpoint")
    if args.follow_poll <= 0 or args.follow_idle_min <= 0:
        raise InputError("--follow-poll and --follow-idle-min: expected positive numbers")
    runs = [FollowedRun(check_run_folder(Path(folder))) for folder in args.follow]
    seeds = parse_seeds(args.seeds)
    if args.dry_run:
        for run in runs:
            found = published_encoders(run.folder)
            print(f"{run.folder}: {len(found)} encoder(s) published so far" +
                  "".join(f"\n  {p.name}" for p in found), file=stream)
        return 0
    follower = Follower([args.suite], runs, execution, profiles, results_root=results_root, data_root=args.data_root,
                        seeds=seeds, option_pairs={args.suite: args.overrides}, max_parallel=args.max_parallel,
                        force=args.force, wait=not args.no_wait, progress=not args.no_progress, stream=stream,
                        poll_s=args.follow_poll, idle_s=args.follow_idle_min * 60.0)
    summary = follower.run()
    states = ", ".join(f"{k}={v}" for k, v in sorted(summary.states.items()))
    print(f"follow: {args.suite}: {summary.encoders} encoder(s): submitted {summary.submitted} cell(s), "
          f"kept {summary.kept}, watched {summary.watched}; states: {states or 'none'}", file=stream)
    if not args.no_leaderboard and summary.plans:
        from bench.leaderboard import write_suite_tables

        for path in write_suite_tables(results_root, args.suite):
            print(f"wrote {path}", file=stream)
    return 1 if summary.failed or summary.stopped_early else 0


__all__ = ["follow_command", "snapshots_of", "FollowSummary", "FollowedRun", "Follower", "check_run_folder", "follow_pretraining",
           "published_encoders", "pretrain_cell_stopped"]
