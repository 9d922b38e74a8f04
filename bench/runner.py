"""Submit a plan's cells through an executor and watch them until every cell is done or failed.

The cell folders are the only truth: a cell with a valid result.json is never recomputed (unless
forced), a cell owned by a job that is still alive (an earlier runner's, killed or detached) is
watched rather than submitted again, and everything else is submitted.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from bench.job import CellJob
from bench.plan import Plan, PlannedCell
from bench.progress import ProgressView
from bench.store import CellFolder, CellState, append_event, atomic_write_json
from slurm.executors import Driving, Execution, LiveJobs, RecordedJob, recorded_job
from slurm.jobs import process_alive
from slurm.profiles import ResourceProfile, get_profile

TERMINAL = ("done", "failed")
# A claim by a runner on another host cannot be checked with a pid: it holds this long, which covers
# the seconds between claiming and submitting (SLURM submits every claimed cell at once).
CLAIM_TTL_OTHER_HOST_S = 600.0
# claim.json's "executor": not an executor, the runner that claimed the cell and has not submitted it yet
CLAIM_OWNER = "runner"


class SubmissionError(ValueError):
    """The scheduler refused a submission (bad partition, account, limits); the message says why."""


@dataclass
class Tracked:
    planned: PlannedCell
    folder: CellFolder
    job: Any = None  # the submitit Job when this runner submitted it
    owner: dict[str, Any] | None = None  # submitted.json of an earlier runner's job we adopted
    state: str = "queued"
    lost_checks: int = 0
    claimed: bool = False  # this runner claimed the cell (claim.json) and will submit it


@dataclass
class RunSummary:
    total: int = 0
    skipped_done: int = 0
    submitted: int = 0
    adopted: int = 0
    recomputed_corrupt: int = 0
    states: Counter = field(default_factory=Counter)
    job_ids: list[str] = field(default_factory=list)
    submit_seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.states.get("failed", 0)


def is_claim(record: dict[str, Any]) -> bool:
    """A claim.json record (a runner will submit the cell), rather than a submitted job's record."""
    return record.get("executor") == CLAIM_OWNER


def recorded_jobs(records: list[dict[str, Any]]) -> list[RecordedJob]:
    """The submitted jobs these records name (claims and records without a job left out)."""
    jobs = (recorded_job(record) for record in records if not is_claim(record))
    return [job for job in jobs if job is not None]


def owner_alive(owner: dict[str, Any], live: LiveJobs | None = None) -> bool:
    """Is the job recorded in submitted.json (or the runner of a claim) still queued or running?"""
    if is_claim(owner):
        alive = process_alive(owner.get("host"), owner.get("runner_pid"))
        return alive if alive is not None else time.time() - float(owner.get("time", 0)) < CLAIM_TTL_OTHER_HOST_S
    job = recorded_job(owner)
    if job is None:
        return False
    alive = job.alive(live or LiveJobs())
    if alive is None:  # a scheduler's job of unknown state: assume alive rather than duplicate; another host's
        return job.execution.jobs_outlive_runner  # local job: not ours
    return alive


class Runner:
    def __init__(
        self,
        plan: Plan,
        execution: Execution,
        profiles: dict[str, ResourceProfile],
        *,
        max_parallel: int | None = None,
        force: bool = False,
        wait: bool = True,
        dependency: str | None = None,
        progress: bool = True,
        stream: TextIO | None = None,
        poll_s: float = 0.5,
    ):
        self.plan = plan
        self.execution = execution
        self.profiles = profiles
        self.max_parallel = max_parallel
        self.force = force
        self.wait = wait
        self.dependency = dependency
        self.progress = progress
        self.stream = stream or sys.stderr
        self.poll_s = poll_s
        self.notes: list[str] = []
        self._executors: dict[str, Any] = {}
        self.summary = RunSummary(total=len(plan.cells))
        self.adopted: list[Tracked] = []

    # ---------------------------------------------------------------- helpers
    def say(self, message: str) -> None:
        if self._view is not None:
            self._view.write(message)
        else:
            print(message, file=self.stream, flush=True)

    _view: ProgressView | None = None

    def profile_for(self, planned: PlannedCell) -> ResourceProfile:
        return get_profile(self.profiles, planned.cell.task.profile)

    def executor_for(self, profile_name: str):
        if profile_name not in self._executors:
            profile = self.execution.fit_profile(get_profile(self.profiles, profile_name), self.notes)
            self._executors[profile_name] = self.execution.make_executor(
                self.plan.store.jobs_dir,
                profile,
                name=f"rb-{self.plan.suite.name}-{profile_name}",
                max_parallel=self.max_parallel,
                dependency=self.dependency,
            )
        return self._executors[profile_name]

    def cell_job(self, planned: PlannedCell) -> CellJob:
        return CellJob(
            suite_name=self.plan.suite_name,
            cell=planned.cell,
            cell_id=planned.cell_id,
            results_root=str(self.plan.store.root.resolve()),
            protocol_version=self.plan.suite.protocol_version,
            checkpoint_identity=planned.checkpoint,
            executor=self.execution.name,
            dataset=planned.dataset,
        )

    def mark_submitted(self, tracked: Tracked, job_id: str) -> None:
        planned = tracked.planned
        record = {"time": time.time(), "executor": self.execution.name, "job_id": job_id,
                  "host": socket.gethostname(), "runner_pid": os.getpid(), "task": planned.cell.task.name,
                  "seed": planned.cell.seed, "checkpoint": planned.checkpoint}
        atomic_write_json(tracked.folder.submitted_path, record, fsync=False)
        tracked.folder.claim_path.unlink(missing_ok=True)  # the submission supersedes the claim
        append_event(tracked.folder.path, "submitted", executor=self.execution.name, job_id=job_id)
        tracked.state = "submitted"
        self.summary.job_ids.append(job_id)

    # ---------------------------------------------------------------- classify
    def classify(self) -> tuple[list[Tracked], list[Tracked], list[Tracked]]:
        """Split the plan into (done, in flight elsewhere, to submit) and claim the cells to submit.

        Under the suite lock, so a second runner started at the same time sees this one's claims
        and watches those cells instead of submitting them again."""
        with self.plan.store.lock():
            done, in_flight, to_submit = self._classify()
            claimed_at = time.time()
            for tracked in to_submit:
                self._claim(tracked, claimed_at)
        return done, in_flight, to_submit

    def _claim(self, tracked: Tracked, claimed_at: float) -> None:
        planned = tracked.planned
        if not tracked.folder.description_path.exists():  # names the cell in bench.status before any job exists
            atomic_write_json(tracked.folder.description_path, {
                "cell_id": planned.cell_id, "suite": self.plan.suite.name, "task": planned.cell.task.name,
                "params": dict(planned.cell.task.params), "seed": planned.cell.seed,
                "checkpoint": planned.checkpoint, "dataset": planned.dataset, "options": dict(planned.cell.options),
            }, fsync=False)
        atomic_write_json(tracked.folder.claim_path, {
            "time": claimed_at, "executor": CLAIM_OWNER, "submits_with": self.execution.name, "runner_pid": os.getpid(),
            "host": socket.gethostname()}, fsync=False)
        tracked.claimed = True

    def _release_claims(self, trackeds: list[Tracked]) -> None:
        """Claims of cells this runner never submitted (interrupted, or refused by sbatch)."""
        for tracked in trackeds:
            if tracked.claimed and tracked.job is None:
                claim = tracked.folder.claim() or {}
                if claim.get("runner_pid") == os.getpid() and claim.get("host") == socket.gethostname():
                    tracked.folder.claim_path.unlink(missing_ok=True)

    def _refresh_owner(self, tracked: Tracked) -> None:
        """A watched cell that another runner had only claimed: once it is submitted, watch its job."""
        owner = tracked.owner or {}
        if is_claim(owner):
            submitted = tracked.folder.submitted()
            if submitted and submitted.get("time", 0) >= owner.get("time", 0):
                tracked.owner = submitted
                tracked.state = "submitted"

    def _classify(self) -> tuple[list[Tracked], list[Tracked], list[Tracked]]:
        done, in_flight, to_submit = [], [], []
        candidates = []
        for planned in self.plan.cells:
            folder = self.plan.store.cell(planned.cell_id)
            folder.path.mkdir(parents=True, exist_ok=True)
            state = folder.state()
            tracked = Tracked(planned, folder)
            if state.state == "done":
                if not self.force:
                    tracked.state = "done"
                    done.append(tracked)
                    continue
                folder.quarantine_result("replaced")
            elif state.state == "corrupt":
                self.say(f"corrupt result, recomputing: {state.detail}")
                folder.quarantine_result("corrupt")
                self.summary.recomputed_corrupt += 1
            elif state.state in ("submitted", "running"):
                candidates.append((tracked, folder.submitted() or {}))
                continue
            elif state.state == "queued":
                candidates.append((tracked, folder.claim() or {}))
                continue
            to_submit.append(tracked)
        live = LiveJobs.query(recorded_jobs([owner for _, owner in candidates]))
        for tracked, owner in candidates:
            if not self.force and owner_alive(owner, live):
                tracked.owner = owner
                if is_claim(owner):
                    tracked.state = "queued"
                else:
                    tracked.state = "running" if tracked.folder.running() else "submitted"
                in_flight.append(tracked)
            else:
                to_submit.append(tracked)
        return done, in_flight, to_submit

    # ---------------------------------------------------------------- run
    def run(self) -> RunSummary:
        for name in sorted({p.cell.task.profile for p in self.plan.cells}):
            self.executor_for(name)  # fit every profile (and refuse a bad partition) before submitting
        done, in_flight, to_submit = self.classify()
        self.summary.skipped_done = len(done)
        self.summary.adopted = len(in_flight)
        self.adopted = in_flight
        tracked_all = done + in_flight + to_submit
        if in_flight:
            self.say(f"{len(in_flight)} cell(s) already owned by live jobs; watching them instead of resubmitting")
        self._open_bar(len(tracked_all), len(done))
        drive = {Driving.IN_PROCESS: self._run_in_process, Driving.PROCESS_POOL: self._run_pool,
                 Driving.BATCH_ARRAY: self._run_array}[self.execution.driving]
        try:
            drive(to_submit, in_flight)
        finally:
            self._release_claims(to_submit)
            self._close_bar()
        for note in self.notes:
            self.say(f"note: {note}")
        self.summary.states = Counter(t.state for t in tracked_all)
        return self.summary

    def _open_bar(self, total: int, initial: int) -> None:
        label = f"{self.plan.suite.name} [{self.execution.name}]"
        self._view = ProgressView(label, total, initial, self.stream, enabled=self.progress)

    def _close_bar(self) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None

    def _update_bar(self, tracked: list[Tracked]) -> None:
        if self._view is not None:
            self._view.update(Counter(t.state for t in tracked))

    def _finish(self, tracked: Tracked) -> None:
        """Read the cell's terminal state from its files and report a failure as it happens."""
        state = tracked.folder.state()
        if state.state == "done":
            tracked.state = "done"
            return
        tracked.state = "failed"
        if state.state != "failed":  # the job ended without writing either file (killed, OOM, node lost)
            log = ""
            if tracked.job is not None:
                log = f"; log: {tracked.job.paths.stderr}"
            message = f"job ended without writing a result (state: {state.state}){log}"
            owner = tracked.owner or {}
            if tracked.job is None and is_claim(owner):
                message = (f"the runner that claimed this cell (pid {owner.get('runner_pid')} on {owner.get('host')}) "
                           "ended before submitting it; run the command again to submit it")
            atomic_write_json(tracked.folder.error_path, {"time": time.time(), "type": "LostJob",
                                                          "message": message, "traceback": ""})
            append_event(tracked.folder.path, "lost", message=message)
            state = CellState("failed", message)
        self.say(f"FAILED {tracked.planned.label} [{tracked.planned.cell_id}]: {state.detail}")

    # ---------------------------------------------------------------- executors
    def _run_in_process(self, to_submit: list[Tracked], in_flight: list[Tracked]) -> None:
        """One job at a time inside this process, then watch the cells earlier runners' jobs own."""
        for tracked in to_submit:
            executor = self.executor_for(tracked.planned.cell.task.profile)
            job = self.execution.submit(executor, self.cell_job(tracked.planned))
            tracked.job = job
            self.mark_submitted(tracked, str(job.job_id))
            self.summary.submitted += 1
            tracked.state = "running"
            self._update_bar(to_submit)
            self.execution.run_in_process(job)
            self._finish(tracked)
            self._update_bar(to_submit)
        self._run_pool([], in_flight)

    def _run_pool(self, to_submit: list[Tracked], in_flight: list[Tracked]) -> None:
        """Up to max_parallel (default: the CPU count) jobs at once as processes of this machine."""
        limit = self.max_parallel or max(os.cpu_count() or 1, 1)
        queue = list(to_submit)
        active: list[Tracked] = list(in_flight)
        everything = to_submit + in_flight
        while queue or active:
            while queue and sum(1 for t in active if t.job is not None) < limit:
                tracked = queue.pop(0)
                executor = self.executor_for(tracked.planned.cell.task.profile)
                submit_start = time.time()
                tracked.job = self.execution.submit(executor, self.cell_job(tracked.planned))
                self.mark_submitted(tracked, str(tracked.job.job_id))
                self.summary.submit_seconds += time.time() - submit_start
                self.summary.submitted += 1
                active.append(tracked)
            still = []
            for tracked in active:
                if tracked.job is not None:
                    finished = tracked.job.done()
                else:  # a cell an earlier runner's job owns: done when its result appears or its job is gone
                    finished = tracked.folder.result_path.exists() or not self._adopted_alive(tracked)
                if finished:
                    self._finish(tracked)
                else:
                    if tracked.state == "submitted" and tracked.folder.running():
                        tracked.state = "running"
                    still.append(tracked)
            active = still
            self._update_bar(everything)
            if queue or active:
                time.sleep(self.poll_s)

    _live_cache: tuple[float, LiveJobs] = (0.0, LiveJobs())

    def _adopted_alive(self, tracked: Tracked) -> bool:
        """Is the job an earlier runner submitted for this cell still alive (the scheduler asked every 3 s)?"""
        self._refresh_owner(tracked)
        owner = tracked.owner or {}
        checked_at, live = self._live_cache
        if time.time() - checked_at > 3.0:
            live = LiveJobs.query(recorded_jobs([t.owner for t in self.adopted if t.owner]))
            self._live_cache = (time.time(), live)
        return owner_alive(owner, live)

    def submit_array(self, to_submit: list[Tracked]) -> None:
        """Every cell of a profile in one submission (a SLURM job array)."""
        groups: dict[str, list[Tracked]] = {}
        for tracked in to_submit:
            groups.setdefault(tracked.planned.cell.task.profile, []).append(tracked)
        submit_start = time.time()
        for profile_name, members in groups.items():
            executor = self.executor_for(profile_name)
            try:
                jobs = self.execution.submit_array(executor, [self.cell_job(t.planned) for t in members])
            except RuntimeError as error:  # sbatch refused (FailedJobError / FailedSubmissionError)
                raise SubmissionError(f"sbatch refused the {profile_name!r} array of {len(members)} cell(s) "
                                      f"({self.summary.submitted} cell(s) were submitted before): "
                                      f"{str(error).strip()}") from None
            for tracked, job in zip(members, jobs):
                tracked.job = job
                self.mark_submitted(tracked, str(tracked.job.job_id))
            self.summary.submitted += len(members)
        self.summary.submit_seconds = time.time() - submit_start

    def _run_array(self, to_submit: list[Tracked], in_flight: list[Tracked]) -> None:
        """Submit the arrays, then (when waiting) watch the cell files and the scheduler's queue."""
        self.submit_array(to_submit)
        if not self.wait:
            return
        active = to_submit + in_flight
        everything = list(active)
        last_queue_check = 0.0
        while active:
            time.sleep(self.poll_s)
            check_queue = time.time() - last_queue_check > 3.0
            live = None
            if check_queue:
                ids = [self._job_id(t) for t in active]
                live = self.execution.live_jobs([i for i in ids if i])
                last_queue_check = time.time()
            still = []
            for tracked in active:
                self._refresh_owner(tracked)
                if is_claim(tracked.owner or {}):  # claimed by a runner that has not submitted yet
                    if tracked.folder.result_path.exists() or not owner_alive(tracked.owner):
                        self._finish(tracked)
                    else:
                        still.append(tracked)
                    continue
                state = tracked.folder.state()
                if state.state in ("done", "failed", "corrupt"):
                    if state.state == "failed" and live is not None and self._job_id(tracked) in live:
                        still.append(tracked)  # failed attempt but the job is requeued/retrying
                        continue
                    self._finish(tracked)
                    continue
                if state.state == "running":
                    tracked.state = "running"
                if live is not None and self._job_id(tracked) not in live:
                    tracked.lost_checks += 1  # give the shared filesystem one more round to show the file
                    if tracked.lost_checks >= 2:
                        self._finish(tracked)
                        continue
                still.append(tracked)
            active = still
            self._update_bar(everything)

    @staticmethod
    def _job_id(tracked: Tracked) -> str | None:
        if tracked.job is not None:
            return str(tracked.job.job_id)
        return str((tracked.owner or {}).get("job_id") or "") or None


def describe_plan(plan: Plan, execution: Execution, profiles: dict[str, ResourceProfile], max_parallel: int | None,
                  stream: TextIO) -> None:
    """The --dry-run view: every cell with its state and resources, then the totals."""
    notes: list[str] = []
    fitted = {}
    for planned in plan.cells:
        name = planned.cell.task.profile
        if name not in fitted:
            fitted[name] = execution.fit_profile(get_profile(profiles, name), notes)
    states = Counter()
    print(f"suite {plan.suite.name} (protocol {plan.suite.protocol_version}) on executor {execution.name}", file=stream)
    print(f"results: {plan.store.suite_dir}", file=stream)
    print(f"options: {plan.options}", file=stream)
    if plan.suite.uses_checkpoints:
        print(f"checkpoints ({len(plan.checkpoints)}):", file=stream)
        for path in plan.checkpoints:
            print(f"  {path}", file=stream)
    if plan.untrained:
        print(f"embedded encoders not trained yet ({len(plan.untrained)}); a real run trains them first "
              f"({plan.untrained_note}):", file=stream)
        for path in plan.untrained:
            print(f"  {path}", file=stream)


    datasets = {p.dataset["label"]: p.dataset for p in plan.cells if p.dataset}
    if datasets:  # the fingerprints that are part of the cell ids below
        print("datasets: " + ", ".join(f"{label} ({d['files']} files)" for label, d in sorted(datasets.items())),
              file=stream)
    print(f"cells ({len(plan.cells)}):", file=stream)
    for planned in plan.cells:
        if not planned.cell_id:  # its encoder does not exist yet, so neither does its id
            states["after training"] += 1
            print(f"  {'-':20s}  submit after training the embedded encoders ({plan.untrained_note.split(':')[0]}) "
                  f"{planned.label}  [{planned.cell.task.profile}]", file=stream)
            continue
        state = plan.store.cell(planned.cell_id).state().state
        states[state] += 1
        action = "keep" if state == "done" else "submit"
        print(f"  {planned.cell_id}  {action:6s} {state:9s} {planned.label}  [{planned.cell.task.profile}]", file=stream)
    print("resources:", file=stream)
    for name, profile in fitted.items():
        print(f"  {name}: {profile.describe()}", file=stream)
    for note in notes:
        print(f"  note: {note}", file=stream)
    print(f"max parallel: {execution.parallelism(max_parallel)}", file=stream)
    print("totals: " + ", ".join(f"{k}={v}" for k, v in sorted(states.items())), file=stream)
    print("dry run: nothing submitted", file=stream)


__all__ = ["CLAIM_OWNER", "Runner", "RunSummary", "SubmissionError", "describe_plan", "is_claim", "owner_alive",
           "recorded_jobs"]
