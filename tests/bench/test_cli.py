"""The command line: plans, user errors (exit 2, nothing submitted), the registry."""

from __future__ import annotations

import pytest

from bench.plan import parse_suite_options
from bench.suite import InputError, comma_list
from bench.suites import SUITES, load_suite, suite_names
from ringbench_testing.bench import run_bench


def test_every_suite_name_is_registered_lazily():
    for name in ("knn", "pretrain", "meta_dataset", "coco_det", "linear", "estimators"):
        assert name in SUITES
        module, _, cls = SUITES[name].partition(":")
        assert module.startswith("bench.suites.") and cls


def test_unknown_suite_lists_the_valid_ones():
    with pytest.raises(InputError) as info:
        load_suite("knnn")
    for name in suite_names():
        assert name in str(info.value)


def test_options_are_typed_by_their_defaults_and_unknown_keys_list_valid_ones():
    suite = load_suite("knn")
    options = parse_suite_options(suite, ["ks=1,5", "temperature=0.5"])
    assert options["ks"] == [1, 5] and options["temperature"] == 0.5
    with pytest.raises(InputError, match="valid keys: batch_size, cmc_features, device, force_rgb_input, ks, temperature"):
        parse_suite_options(suite, ["k=3"])
    with pytest.raises(InputError, match="knn option temperature='warm': expected a float"):
        parse_suite_options(suite, ["temperature=warm"])


def test_dry_run_prints_the_plan_and_submits_nothing(tmp_path, encoder_pair, bench_env):
    results = tmp_path / "results"
    out = run_bench(["--suite", "knn", "--checkpoints", ",".join(map(str, encoder_pair)), "--results", str(results),
                     "--executor", "local", "--dry-run", "--resource", "eval.timeout_min=7"], bench_env)
    assert out.returncode == 0, out.stderr
    assert "cells (2):" in out.stdout and "executor local" in out.stdout
    assert "moco/nce digits" in out.stdout and "moco/ring digits" in out.stdout
    assert "eval: 1x1 task(s)" in out.stdout and "7 min" in out.stdout
    assert "dry run: nothing submitted" in out.stdout
    assert not (results / "knn" / "jobs").exists() and not (results / "knn" / "cells").exists()


@pytest.mark.parametrize("args, message", [
    (["--suite", "nope"], "unknown suite 'nope'; valid suites: coco_det, estimators, knn"),
    (["--suite", "knn", "k=3"], "unknown knn option 'k' (did you mean ks?); valid keys: batch_size, cmc_features, "
                                "device, force_rgb_input, ks, temperature"),
    (["--suite", "knn", "ks=0"], "knn option ks='0': expected a comma list of numbers >= 1"),
    (["--suite", "knn", "batch_size=0"], "knn option batch_size='0': expected an integer >= 1"),
    (["--suite", "knn", "device=gpu"], "knn option device='gpu': expected cpu, cuda, cuda:N or mps"),
    (["--suite", "knn", "--checkpoints", "/nonexistent/*.pt"], "matches no file"),
    (["--suite", "selftest", "--resource", "eval.gpu=2"], "unknown resource key 'gpu' (did you mean gpus?); valid keys: gpus"),
    (["--suite", "selftest", "--executor", "local", "--no-wait"], "--no-wait needs the slurm executor"),
    (["--suite", "selftest", "--tasks", "probe0001,probe9"], "unknown task(s) 'probe9' for suite selftest with these "
                                                             "options; valid tasks: probe0000, probe0001"),
])
def test_user_errors_exit_2_with_one_clean_paragraph(tmp_path, bench_env, encoder_pair, args, message):
    if "--checkpoints" not in args and args[1] == "knn":
        args = args + ["--checkpoints", str(encoder_pair[0])]
    out = run_bench(args + ["--results", str(tmp_path / "r")], bench_env)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.pkl"))


def test_a_bad_checkpoint_is_refused_before_submission(tmp_path, bench_env):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    out = run_bench(["--suite", "knn", "--checkpoints", str(bad), "--results", str(tmp_path / "r")], bench_env)
    assert out.returncode == 2
    assert "broken.pt: not a readable torch checkpoint" in out.stderr
    assert not (tmp_path / "r" / "knn" / "jobs").exists()


def test_records_is_the_data_root_and_a_missing_folder_is_named(tmp_path, encoder_pair, bench_env):
    missing = tmp_path / "md_records"
    out = run_bench(["--suite", "meta_dataset", "--records", str(missing), "--checkpoints",
                     ",".join(map(str, encoder_pair)), "--results", str(tmp_path / "results"), "--dry-run"], bench_env)
    assert out.returncode == 2
    assert str(missing) in out.stderr + out.stdout
    assert not (tmp_path / "results" / "meta_dataset" / "cells").exists()


def test_suites_complete_their_options_and_refuse_unknown_keys():
    suite = load_suite("coco_det")
    options = suite.parse_options({"max_iter": 3})
    assert options.max_iter == 3 and options.engine == suite.options["engine"] == "auto"
    with pytest.raises(InputError, match="unknown coco_det option 'iters' .did you mean max_iter..; valid keys: .*max_iter"):
        suite.parse_options({"iters": 3})


def test_comma_list_options_accept_text_or_sequences():
    assert comma_list(" mask_rcnn, ,keypoint_rcnn ") == ("mask_rcnn", "keypoint_rcnn")
    assert comma_list(["omniglot ", "", " aircraft"]) == ("omniglot", "aircraft")
    assert comma_list(" , ") == ()
    assert parse_suite_options(load_suite("knn"), ["ks=5, 50,"])["ks"] == [5, 50]
