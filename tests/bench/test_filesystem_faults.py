"""Filesystem faults get one clear line, exit 2, and nothing lost: a read-only results folder or cache, a full
disk (named with its free space), and files and folders that follow the umask.

The read-only and full-disk cases mount a real read-only bind mount and a 1 MB tmpfs, so they need root
(and a kernel that lets the test mount); elsewhere they skip, saying why."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringbench_common.atomic_files import DiskFullError, atomic_write, check_writable, disk_full
from ringbench_testing.bench import make_encoder, run_bench

REPO = Path(__file__).resolve().parents[2]


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only bind mount or a 1 MB tmpfs needs root")


@pytest.fixture
def read_only(tmp_path):
    """(writable folder, the same folder mounted read-only)."""
    _need_root()
    writable, read_only = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    read_only.mkdir()
    done = _mount("--bind", str(writable), str(read_only))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        done = _mount("-o", "remount,bind,ro", str(read_only))
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
        yield writable, read_only
    finally:
        _umount(read_only)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs: too small for one cell's features."""
    _need_root()
    folder = tmp_path / "tiny"
    folder.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        _umount(folder)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("enc") / "moco.pt", "nce", seed=0)


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_read_only_results_folder_is_one_line_and_exit_2(tmp_path, bench_env, encoder, read_only, dry_run):
    _, results = read_only
    out = run_bench(["--suite", "knn", "--checkpoints", str(encoder), "--results", str(results), "--executor",
                     "local", "--no-progress", *(["--dry-run"] if dry_run else [])], bench_env)
    line = _one_error_line(out)
    assert f"results folder {results} is not writable: {results} is on a read-only filesystem" in line


def test_a_read_only_suite_folder_under_a_writable_root_is_caught_too(tmp_path, bench_env, encoder, read_only):
    writable, read_only_folder = read_only
    results = tmp_path / "results"
    results.mkdir()
    (results / "knn").symlink_to(read_only_folder)
    out = run_bench(["--suite", "knn", "--checkpoints", str(encoder), "--results", str(results), "--dry-run"],
                    bench_env)
    assert f"results folder {results / 'knn'} is not writable" in _one_error_line(out)


def test_a_read_only_cache_is_named_before_planning(tmp_path, bench_env, encoder, read_only):
    _, cache = read_only
    out = run_bench(["--suite", "knn", "--checkpoints", str(encoder), "--results", str(tmp_path / "r"), "--dry-run"],
                    bench_env | {"RINGBENCH_CACHE": str(cache)})
    assert f"cache folder (RINGBENCH_CACHE) {cache} is not writable" in _one_error_line(out)
    assert not (tmp_path / "r").exists()


def test_the_leaderboard_of_a_read_only_results_folder_is_one_line(tmp_path, bench_env, read_only):
    writable, results = read_only
    cell = writable / "selftest" / "cells" / "x"
    cell.mkdir(parents=True)
    (cell / "error.json").write_text(json.dumps({"message": "boom"}))
    out = run_bench(["--results", str(results), "--no-plot"], bench_env, module="bench.leaderboard")
    assert f"error: the leaderboard was not written: results folder {results} is not writable" in _one_error_line(out)
    assert sorted(p.name for p in writable.iterdir()) == ["selftest"]  # nothing else written


@pytest.mark.slow
def test_a_full_disk_names_the_path_and_free_space_and_a_rerun_completes(tmp_path, bench_env, encoder, tiny_disk):
    args = ["--suite", "knn", "--checkpoints", str(encoder), "--results", str(tiny_disk), "--executor", "local",
            "--no-progress"]
    out = run_bench(args, bench_env)
    line = _one_error_line(out)
    assert f"error: 1 cell(s) failed for lack of disk space: no space left on the device holding {tiny_disk}" in line
    assert "free there when the write failed" in line
    assert "requested and" not in out.stderr  # numpy's short-write message is replaced, not passed on
    assert not list(tiny_disk.rglob("result.json")) and not list(tiny_disk.rglob(".*.tmp"))
    _mount("-o", "remount,size=300m", str(tiny_disk))  # space freed
    rerun = run_bench(args, bench_env)
    assert rerun.returncode == 0, rerun.stderr
    results = list(tiny_disk.rglob("result.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["metrics"]


def test_a_disk_full_write_is_named_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out" / "features.npy"

    def fill(handle):
        handle.write(b"x" * 10)
        raise OSError("735744 requested and 247776 written")  # what numpy's tofile raises on a full disk

    with pytest.raises(DiskFullError) as info:
        atomic_write(target, fill)
    assert str(info.value).startswith(f"no space left on the device holding {target.parent} while writing "
                                      "features.npy (")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []
    assert disk_full(OSError(errno.EACCES, "Permission denied"), target) is None  # other faults pass through


def test_check_writable_names_the_nearest_existing_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    check = (f"from pathlib import Path\nfrom ringbench_common.atomic_files import check_writable\n"
             f"check_writable(Path({str(locked / 'a' / 'b')!r}), 'results folder')")
    # root writes through permission bits; without CAP_DAC_OVERRIDE (setpriv, util-linux) it does not
    command = [sys.executable, "-c", check]
    if os.geteuid() == 0:
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode != 0
    assert (f"results folder {locked / 'a' / 'b'} is not writable: no permission to write in {locked}"
            in out.stderr), out.stderr[-2000:]
    check_writable(tmp_path / "new" / "deeper", "results folder")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()


@pytest.fixture
def umask_002():
    previous = os.umask(0o002)
    try:
        yield 0o002
    finally:
        os.umask(previous)


def _modes_follow_the_umask(root: Path, umask: int) -> None:
    wrong = []
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.is_file() and mode & 0o111:
            expected = 0o777 & ~umask  # an executable file keeps its x bits
        if mode != expected:
            wrong.append(f"{path.relative_to(root.parent)} {oct(mode)} (expected {oct(expected)})")
    assert not wrong, wrong


def test_the_embedded_meta_dataset_records_follow_the_umask(tmp_path, monkeypatch, umask_002):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    from transfer.meta_dataset.embedded import embedded_records

    root = embedded_records()
    assert root.name == "records-v1" or root.is_dir()
    _modes_follow_the_umask(root, umask_002)


def test_the_embedded_coco_folder_follows_the_umask(tmp_path, umask_002):
    from transfer.detection.embedded import build_embedded_coco

    _modes_follow_the_umask(build_embedded_coco(tmp_path / "coco", train_images=4, val_images=2), umask_002)


def test_the_embedded_voc_folder_follows_the_umask(tmp_path, umask_002):
    from transfer.detection.voc_embedded import build_embedded_voc

    root = build_embedded_voc(tmp_path / "voc", voc2007_trainval=4, voc2012_trainval=4, voc2007_test=8)
    _modes_follow_the_umask(root, umask_002)


def test_a_cells_event_log_follows_the_umask(tmp_path, umask_002):
    from bench.store import EVENTS, append_event

    append_event(tmp_path / "cell", "started")
    assert (tmp_path / "cell" / EVENTS).stat().st_mode & 0o777 == 0o664
