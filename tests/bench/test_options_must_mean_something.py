"""Options that would do nothing are not accepted in silence: view options on files they cannot affect do not
make new cells, two spellings of one setting must agree, the device must exist where the jobs run, and seed
lists are deduplicated with a notice and never empty."""

from __future__ import annotations

import io

import pytest

from bench.plan import build_plan, parse_seeds, parse_suite_options
from bench.suite import InputError
from bench.suites import load_suite
from ringbench_testing.bench import make_encoder, run_bench


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from cmc_encoders import write_cmc_encoder

    folder = tmp_path_factory.mktemp("encoders")
    return {"moco": make_encoder(folder / "moco.pt", "nce", seed=0), "cmc": write_cmc_encoder(folder / "cmc.pt")}


def _plan(tmp_path, checkpoint, *options, stream=None, **kwargs):
    return build_plan("knn", load_suite("knn"), results_root=tmp_path / "r", checkpoint_specs=[str(checkpoint)],
                      option_pairs=list(options), stream=stream or io.StringIO(), **kwargs)


def test_view_options_leave_the_identity_of_a_file_they_cannot_affect_alone(tmp_path, encoders):
    default = _plan(tmp_path, encoders["moco"]).cells[0]
    notes = io.StringIO()
    viewed = _plan(tmp_path, encoders["moco"], "cmc_features=ab", "force_rgb_input=true", stream=notes).cells[0]
    assert viewed.cell_id == default.cell_id
    assert viewed.cell.options["cmc_features"] == "concat" and viewed.cell.options["force_rgb_input"] is False
    assert "note: cmc_features=ab cannot change the features of 1 checkpoint(s) (moco/nce)" in notes.getvalue()
    assert "note: force_rgb_input=true cannot change" in notes.getvalue()


def test_view_options_still_tell_cmc_cells_apart(tmp_path, encoders):
    notes = io.StringIO()
    concat = _plan(tmp_path, encoders["cmc"]).cells[0]
    ab = _plan(tmp_path, encoders["cmc"], "cmc_features=ab", stream=notes).cells[0]
    assert ab.cell_id != concat.cell_id and ab.cell.options["cmc_features"] == "ab"
    assert "note" not in notes.getvalue()


def test_an_option_given_twice_with_two_values_is_refused():
    suite = load_suite("knn")
    with pytest.raises(InputError, match=r"option ks given twice for suite knn \(ks=1 and ks=5\); give it once"):
        parse_suite_options(suite, ["ks=1", "ks=5"])
    assert parse_suite_options(suite, ["ks=5", "ks=5"])["ks"] == [5]  # the same value twice says one thing


def test_records_and_the_data_root_flag_must_name_one_folder(tmp_path, encoders):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="records=.*/b and --records .*/a name two folders for the same data"):
        build_plan("meta_dataset", load_suite("meta_dataset"), results_root=tmp_path / "r",
                   checkpoint_specs=[str(encoders["moco"])], data_root=tmp_path / "a",
                   option_pairs=[f"records={tmp_path / 'b'}"], data_root_flag="--records")


@pytest.mark.parametrize("flag", ["--records", "--data-root", "--results", "--seeds"])
def test_a_flag_repeated_with_another_value_is_refused(tmp_path, bench_env, flag):
    out = run_bench(["--suite", "meta_dataset", flag, str(tmp_path / "a"), flag, str(tmp_path / "b"), "--dry-run"],
                    bench_env)
    assert out.returncode == 2
    assert f"error: {flag} given twice ({tmp_path / 'a'} and {tmp_path / 'b'}); give it once" in out.stderr
    assert "Traceback" not in out.stderr


def _missing_cuda_device() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}"  # one past the last device this machine has


def test_a_device_this_machine_lacks_is_refused_before_training(tmp_path, monkeypatch):
    import pretrain.embedded

    def no_training(*args, **kwargs):
        raise AssertionError("the embedded encoders were trained before the device was checked")

    monkeypatch.setattr(pretrain.embedded, "default_encoders", no_training)
    device = _missing_cuda_device()
    with pytest.raises(InputError, match=f"knn device={device}: this machine has .*local and debug executors run"):
        build_plan("knn", load_suite("knn"), results_root=tmp_path / "r", option_pairs=[f"device={device}"],
                   devices_here=True, stream=io.StringIO())


def test_a_device_is_not_checked_here_when_the_jobs_run_elsewhere(tmp_path, encoders):
    notes = io.StringIO()
    device = _missing_cuda_device()
    plan = _plan(tmp_path, encoders["moco"], f"device={device}", devices_here=False, stream=notes)
    assert len(plan.cells) == 1  # SLURM: the node the job lands on checks it, and the plan says so
    assert f"note: knn device={device} is checked on the node where each job runs" in notes.getvalue()


def test_the_cli_checks_the_device_for_the_local_executor(tmp_path, bench_env, encoders):
    device = _missing_cuda_device()
    out = run_bench(["--suite", "knn", "--checkpoints", str(encoders["moco"]), "--executor", "local", "--results",
                     str(tmp_path / "r"), f"device={device}", "--dry-run"], bench_env)
    assert out.returncode == 2 and f"error: knn device={device}: this machine has" in out.stderr
    assert "Traceback" not in out.stderr


def test_repeated_seeds_run_once_with_a_notice():
    notice = io.StringIO()
    assert parse_seeds("0,0,1,0", stream=notice) == [0, 1]
    assert "note: --seeds 0,0,1,0 repeats seed(s) 0; each seed runs once: 0,1" in notice.getvalue()
    quiet = io.StringIO()
    assert parse_seeds("2,1", "--pretrain-seeds", stream=quiet) == [2, 1] and quiet.getvalue() == ""
    assert parse_seeds(None) is None  # the flag left out: the suite's default


@pytest.mark.parametrize("flag", ["--seeds", "--pretrain-seeds"])
@pytest.mark.parametrize("text", ["", " , "])
def test_an_empty_seed_list_is_refused_not_read_as_the_default(flag, text):
    with pytest.raises(InputError, match=f"{flag} {text!r}: expected a comma list of integers"):
        parse_seeds(text, flag)


def test_seeds_0_0_plan_one_cell_per_seed(tmp_path, bench_env, encoders):
    out = run_bench(["--suite", "knn", "--checkpoints", str(encoders["moco"]), "--seeds", "0,0", "--results",
                     str(tmp_path / "r"), "--dry-run"], bench_env)
    assert out.returncode == 0, out.stderr
    assert "cells (1):" in out.stdout and "repeats seed(s) 0" in out.stderr
