import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pretrain.checkpoint import load_encoder
from pretrain.config import ConfigError
from pretrain.recipes import recipe_config
from pretrain.train import ResumeError, Trainer, TrainingDiverged, main

TINY = {"image_size": 16, "batch_size": 16, "max_steps_per_epoch": 2, "knn_every": 0, "num_negatives": 64,
        "queue_size": 64, "workers": 0}


def tiny_config(recipe, **changes):
    return recipe_config(recipe, TINY | {"epochs": 2} | changes)


def states_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["digits_moco_ring", "digits_ir_ring"])
def test_resume_equals_an_uninterrupted_run(tmp_path, recipe):
    straight = Trainer(tiny_config(recipe), tmp_path / "straight", show_progress=False)
    straight.fit()
    first = Trainer(tiny_config(recipe), tmp_path / "split", show_progress=False)
    assert first.fit(until_epoch=1) is None  # stops after one epoch, as a killed job would
    state = torch.load(tmp_path / "split" / "train.state.pt", weights_only=True)
    assert state["epoch"] == 1
    resumed = Trainer(tiny_config(recipe), tmp_path / "split", resume=True, show_progress=False)
    assert resumed.start_epoch == 1
    resumed.fit()
    states_equal(straight.method.state_dict(), resumed.method.state_dict())
    straight_log = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in straight_log] == [r["loss"] for r in resumed_log]
    assert [r["w_out"] for r in resumed_log] == [1.0, 0.5]  # annealed over the first half
    encoder = load_encoder(tmp_path / "split" / "encoder.pt")
    assert encoder.metadata["sampler_params"]["anneal"] == "linear"
    assert encoder.metadata["config"]["method"]["name"] == recipe.split("_")[1]


def test_resume_refuses_truncated_foreign_and_mismatched_states(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(ResumeError, match="no training state"):
        Trainer(tiny_config("digits_simclr_nce"), folder, resume=True)
    (folder / "train.state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ResumeError, match="truncated or foreign"):
        Trainer(tiny_config("digits_simclr_nce"), folder, resume=True)
    torch.save({"state_dict": {}}, folder / "train.state.pt")
    with pytest.raises(ResumeError, match="not a RingBench training state"):
        Trainer(tiny_config("digits_simclr_nce"), folder, resume=True)
    with pytest.raises(ResumeError, match="already holds a training state"):
        Trainer(tiny_config("digits_simclr_nce"), folder, resume=False)


def test_resume_refuses_another_config(tmp_path):
    trainer = Trainer(tiny_config("digits_simclr_nce", epochs=1), tmp_path, show_progress=False)
    trainer.fit()
    with pytest.raises(ResumeError, match="different config.*lr"):
        Trainer(tiny_config("digits_simclr_nce", epochs=1, lr=0.5), tmp_path, resume=True)


def test_nan_loss_stops_naming_the_step(tmp_path):
    trainer = Trainer(tiny_config("digits_simclr_nce", epochs=1), tmp_path, show_progress=False)
    trainer.method.loss = lambda *args: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1 .*global step 1"):
        trainer.fit()
    assert not (tmp_path / "train.state.pt").exists()


def test_cli_errors_list_valid_names(capsys):
    assert main(["--recipe", "digits_moco_rnig"]) == 2
    assert "did you mean digits_moco_ring" in capsys.readouterr().err
    assert main(["--recipe", "digits_moco_ring", "sampler=mochi2"]) == 2
    assert "valid samplers: nce, ring, ball, dcl, hcl, mochi" in capsys.readouterr().err
    assert main(["--recipe", "digits_moco_ring", "method=byol"]) == 2
    assert "valid methods: ir, cmc, moco, simclr" in capsys.readouterr().err
    assert main(["--recipe", "digits_ir_ring", "sampler=mochi"]) == 2
    assert "has no queue" in capsys.readouterr().err
    assert main(["--recipe", "digits_ir_ring", "w_out=1.5"]) == 2
    assert "w_out must lie in [0, 1]" in capsys.readouterr().err
    assert main(["--recipe", "digits_ir_ring", "w_in=1.0"]) == 2
    assert "band is empty" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        recipe_config("digits_ir_ring", {"learning_rate": 1})


def _ddp_worker(rank, world, port, out_dir, recipe, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(tiny_config(recipe, epochs=1, batch_size=8), out_dir, show_progress=False)
    trainer.fit()
    torch.save(trainer.method.state_dict(), os.path.join(result_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["digits_moco_ring", "digits_ir_nce", "digits_simclr_ring"])
def test_ddp_two_gloo_processes_agree_on_weights(tmp_path, recipe):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "run"), recipe, str(tmp_path)), nprocs=2)
    zero = torch.load(tmp_path / "rank0.pt", weights_only=True)
    one = torch.load(tmp_path / "rank1.pt", weights_only=True)
    params = [k for k in zero if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]
    assert params
    for key in params:
        assert torch.allclose(zero[key], one[key], atol=1e-6), key
    initial = Trainer(tiny_config(recipe, epochs=1, batch_size=8), tmp_path / "fresh", show_progress=False)
    if not recipe.startswith("digits_simclr"):  # SimCLR keeps no memory: its negatives are the gathered batch
        memory = "queue" if recipe.startswith("digits_moco") else "bank"
        assert torch.equal(zero[memory], one[memory])
        assert not torch.equal(initial.method.state_dict()[memory], zero[memory])  # memory was updated
    trained = initial.method.state_dict()
    assert any(not torch.equal(trained[key], zero[key]) for key in params)  # the step changed the weights
    assert (tmp_path / "run" / "encoder.pt").exists()


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.events import tensorflow_free_tensorboard

    tensorflow_free_tensorboard()
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_snapshots_carry_their_epoch_and_band_and_survive_a_resume(tmp_path):
    config = tiny_config("digits_moco_ring", epochs=4, snapshot_every=1, knn_every=2)
    out = tmp_path / "run"
    assert Trainer(config, out, show_progress=False).fit(until_epoch=2) is None  # a job killed after epoch 2
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("encoder_e*.pt")}
    assert sorted(first) == ["encoder_e0001.pt", "encoder_e0002.pt"]
    Trainer(config, out, resume=True, show_progress=False).fit()
    # the final epoch's encoder is encoder.pt itself, not a fourth snapshot
    assert sorted(p.name for p in out.glob("encoder_e*.pt")) == ["encoder_e0001.pt", "encoder_e0002.pt",
                                                                  "encoder_e0003.pt"]
    for name, (mtime, content) in first.items():  # resume keeps what was published
        assert (out / name).stat().st_mtime_ns == mtime and (out / name).read_bytes() == content
    metas = {n: load_encoder(out / n).metadata for n in ["encoder_e0001.pt", "encoder_e0002.pt", "encoder_e0003.pt",
                                                         "encoder.pt"]}
    assert [m["epoch"] for m in metas.values()] == [1, 2, 3, 4]
    assert [m["w_out"] for m in metas.values()] == [1.0, 0.75, 0.5, 0.5]  # linear 1.0 -> 0.5 over 2 epochs
    assert metas["encoder_e0001.pt"]["knn_top1"] is None and 0 < metas["encoder_e0002.pt"]["knn_top1"] <= 1
    assert load_encoder(out / "encoder_e0002.pt").sha256 != load_encoder(out / "encoder.pt").sha256
    scalars = _scalars(out / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]  # once per epoch across the resume
    assert [round(v, 4) for _, v in scalars["train/w_out"]] == [1.0, 0.75, 0.5, 0.5]
    assert [step for step, _ in scalars["monitor/knn_top1"]] == [2, 4]
    assert all(v > 0 for _, v in scalars["train/images_per_s"]) and len(scalars["train/lr"]) == 4


def test_snapshot_every_must_not_be_negative():
    with pytest.raises(ConfigError, match="snapshot_every must be >= 0"):
        tiny_config("digits_moco_nce", snapshot_every=-1)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("killed_after", ["metrics_line", "state"])
def test_a_kill_between_the_metrics_line_and_the_state_loses_no_epoch_record(tmp_path, monkeypatch, killed_after):
    """Killed in epoch 2 right after writing one of the two; the resumed run logs every epoch once."""
    import pretrain.train as train_module

    config = tiny_config("digits_simclr_nce", epochs=2, max_steps_per_epoch=1)
    trainer = Trainer(config, tmp_path, show_progress=False)
    calls = []

    def die_on_second_call(real):
        def wrapped(*args):
            real(*args)
            calls.append(1)
            if len(calls) == 2:
                raise _Killed
        return wrapped

    if killed_after == "state":
        monkeypatch.setattr(train_module, "atomic_torch_save", die_on_second_call(train_module.atomic_torch_save))
    else:
        monkeypatch.setattr(Trainer, "_log", die_on_second_call(Trainer._log))
    with pytest.raises(_Killed):
        trainer.fit()
    monkeypatch.undo()
    Trainer(config, tmp_path, resume=True, show_progress=False).fit()
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # each epoch once: none lost, none repeated
