"""Resource profiles, their command-line overrides, and per-task GPU pinning (no cluster needed)."""

from __future__ import annotations

import pytest

from bench.job import pin_device_for_local_rank
from slurm.executors import execution_named
from slurm.profiles import PROFILES, ProfileError, apply_resource_overrides


def test_overrides_target_one_profile_or_all_and_are_typed():
    profiles = apply_resource_overrides(PROFILES, ["detection.nodes=2", "timeout_min=30", "eval.partition=a100"])
    assert profiles["detection"].nodes == 2 and PROFILES["detection"].nodes == 1  # a copy, defaults untouched
    assert {p.timeout_min for p in profiles.values()} == {30}
    assert profiles["eval"].partition == "a100" and profiles["linear"].partition is None
    with pytest.raises(ProfileError, match="expected an integer"):
        apply_resource_overrides(PROFILES, ["eval.gpus=two"])
    with pytest.raises(ProfileError, match="unknown profile 'gpu'; valid profiles: pretrain, eval"):
        apply_resource_overrides(PROFILES, ["gpu.cpus=2"])


def test_one_parameter_set_serves_every_executor(tmp_path):
    profile = apply_resource_overrides(PROFILES, ["eval.partition=a100", "eval.account=proj"])["eval"]
    params = profile.submitit_parameters()
    assert params["gpus_per_node"] == 1 and params["tasks_per_node"] == 1  # one task per GPU
    assert params["slurm_partition"] == "a100" and params["slurm_additional_parameters"] == {"account": "proj"}
    for name in ("local", "debug"):  # slurm_ parameters are accepted and ignored there
        execution = execution_named(name)
        execution.make_executor(tmp_path / name, execution.fit_profile(profile, []), name="x", max_parallel=4)
        assert "nodes" not in execution.submitit_parameters(profile)  # these run on this one machine
    assert execution_named("slurm").submitit_parameters(profile)["nodes"] == 1


def test_a_gpu_request_is_shrunk_on_a_machine_without_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    notes: list[str] = []
    fitted = execution_named("local").fit_profile(PROFILES["pretrain"], notes)
    assert (fitted.gpus, fitted.tasks) == (0, 1) and "no node offers" in notes[0]


@pytest.mark.parametrize("visible, local_rank, expected", [("4,5", 1, "5"), ("0,1,2,3", 2, "2"), ("7", 0, "7")])
def test_each_local_task_gets_its_own_gpu(monkeypatch, visible, local_rank, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    pin_device_for_local_rank(local_rank)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected
