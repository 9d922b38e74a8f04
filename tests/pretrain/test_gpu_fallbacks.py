"""GPU features fail soft: each failure injected, the run goes on with one warning and says what it used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from pretrain import gpu_fallbacks
from pretrain.gpu_fallbacks import CompileGuard, resolve_precision


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(gpu_fallbacks, "_WARNED", set())


class CompilerFailure(RuntimeError):
    """Stands for torch._dynamo's BackendCompilerFailed / Inductor's 'no working C++ compiler'."""


def failing_compile(calls: list):
    """A torch.compile whose result raises at its first call, as a compile failure shows (lazily)."""

    def compile_fn(module, *args, **kwargs):
        def compiled(*inputs, **kw):
            calls.append(1)
            raise CompilerFailure("backend='inductor' raised:\nInvalidCxxCompiler: No working C++ compiler found")
        return compiled

    return compile_fn


def test_compile_failure_falls_back_to_eager_once(capfd):
    calls = []
    guard = CompileGuard(failing_compile(calls))
    first, second = nn.Linear(4, 3), nn.Linear(4, 2)
    wrapped = [guard.wrap(first), guard.wrap(second)]
    x = torch.randn(5, 4)
    assert torch.equal(wrapped[0](x), first(x))  # the failed call is answered eagerly
    assert torch.equal(wrapped[1](x), second(x))  # the other module was switched too
    assert torch.equal(wrapped[0](x), first(x))
    assert calls == [1]  # the compiled path is not retried
    assert guard.mode == "eager (fallback)" and "CompilerFailure" in guard.failure
    assert capfd.readouterr().err.count("warning: torch.compile of the encoders failed") == 1


def test_a_fault_of_the_model_is_not_taken_for_a_compile_failure():
    guard = CompileGuard(failing_compile([]))
    wrapped = guard.wrap(nn.Linear(4, 3))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        wrapped(torch.randn(5, 7))
    assert guard.failure is None


def test_compile_refused_up_front_falls_back_too():
    def refuse(module):
        raise RuntimeError("Dynamo is not supported on this Python")

    guard = CompileGuard(refuse)
    model = nn.Linear(2, 2)
    x = torch.randn(1, 2)
    assert torch.equal(guard.wrap(model)(x), model(x)) and "Dynamo" in guard.failure


def test_bf16_falls_back_to_fp32_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    cuda = torch.device("cuda", 0)
    for setting in ("auto", "bf16"):  # emulated bf16 (what V100 reports by default) does not count
        precision, reason = resolve_precision(setting, cuda)
        assert precision == "fp32" and "V100" in reason
    assert resolve_precision("fp32", cuda) == ("fp32", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", cuda) == ("bf16", None)
    assert resolve_precision("auto", torch.device("cpu")) == ("fp32", None)


# ---------------------------------------------------------------------------------------------- in a run

TINY = {"data.image_size": 16, "optim.batch_size": 16, "optim.max_steps_per_epoch": 2, "knn_every": 0,
        "method.queue_size": 64, "optim.epochs": 1, "data.workers": 0}


def _run(tmp_path, **changes):
    from pretrain.recipes import recipe_config
    from pretrain.train import Trainer

    trainer = Trainer(recipe_config("digits_moco_nce", TINY | changes), tmp_path / "run", show_progress=False)
    trainer.fit()
    return trainer, [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_run_with_failing_compile_goes_on_eagerly(tmp_path, monkeypatch, capfd):
    calls = []
    monkeypatch.setattr(torch, "compile", failing_compile(calls))
    trainer, records = _run(tmp_path, compile="on", **{"optim.epochs": 2})
    assert [r["compile"] for r in records] == ["off", "off"]
    assert "InvalidCxxCompiler" in records[0]["fallbacks"]["compile"]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert calls == [1]
    assert capfd.readouterr().err.count("torch.compile of the encoders failed") == 1


@pytest.mark.slow
def test_run_with_bf16_on_a_device_without_it_uses_fp32(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(gpu_fallbacks, "bf16_supported", lambda device: False)
    trainer, records = _run(tmp_path, precision="bf16", **{"optim.epochs": 2})
    assert trainer.precision == "fp32"
    assert [r["precision"] for r in records] == ["fp32", "fp32"] and "bf16" in records[0]["fallbacks"]["precision"]
    assert capfd.readouterr().err.count("no native bf16 support") == 1


@pytest.mark.slow
def test_run_with_loader_gpu_and_no_gpu_decoder_uses_the_cpu_loader(tmp_path, monkeypatch, capfd):
    from pretrain import images
    from ringbench_testing.odd_images import write_odd_images

    def no_nvjpeg(data, device):
        raise RuntimeError("torchvision.io.decode_jpeg: not compiled with nvjpeg support")

    monkeypatch.setattr(images, "torchvision_device_decoder", no_nvjpeg)
    for wnid in ("n01", "n02", "n03"):
        write_odd_images(tmp_path / "imagenet" / "train" / wnid)
    trainer, records = _run(tmp_path, loader="gpu", **{"data.name": "imagenet", "data.root": str(tmp_path),
                                                        "optim.batch_size": 6, "method.queue_size": 6,
                                                        "method.stem": "cifar"})
    assert trainer.loader_kind == "cpu"
    assert records[0]["loader"] == "cpu" and "nvjpeg" in records[0]["fallbacks"]["loader"]
    assert capfd.readouterr().err.count("the GPU JPEG decoder does not work") == 1


def test_feature_extraction_falls_back_and_reports(monkeypatch, capfd):
    from transfer.features import extract_features

    calls = []
    monkeypatch.setattr(torch, "compile", failing_compile(calls))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    batches = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    execution = {}
    features = extract_features(model, batches, "cpu", compile=True, execution=execution)
    expected = extract_features(model, batches, "cpu", compile=False)
    np.testing.assert_array_equal(features, expected)
    assert execution["compile"] == "off" and "InvalidCxxCompiler" in execution["fallbacks"]["compile"]
    assert calls == [1]
    extract_features(model, batches, "cpu", compile=True)  # a second extraction in the same process
    assert capfd.readouterr().err.count("torch.compile of the feature encoder failed") == 1
