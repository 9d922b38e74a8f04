"""The GPU check script runs end to end at smoke sizes on CPU (the GPU numbers need a GPU): every
check prints its figures next to the anchors measured in the same run."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu import main, official_topk_band


def test_gpu_checks_script_runs_at_smoke_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    only = "pretrain,ir,ring,features,input,end_to_end"
    assert main(["--smoke", "--only", only, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_checks.json").read_text())
    checks = {check["check"]: check for check in results["checks"]}
    assert set(checks) == {"pretrain_step", "ir_step", "ring_selection", "feature_extraction", "input_pipeline_gpu",
                           "end_to_end"}
    pretrain = checks["pretrain_step"]
    assert pretrain["anchor_plain_step_s"] > 0 and pretrain["ring_over_plain_step"] > 0
    assert pretrain["ring_over_nce_step"] == pytest.approx(pretrain["ring_step_s"] / pretrain["nce_step_s"], rel=1e-2)
    assert checks["ir_step"]["ring_over_nce_step"] > 0
    ring = checks["ring_selection"]
    for label in ("exact", "threshold_sample_4096", "anchor_official_topk", "anchor_full_sort"):
        assert ring[f"{label}_ms"] > 0 and ring[f"{label}_over_matmul"] > 0
    features = checks["feature_extraction"]
    assert features["anchor_plain_inference_images_per_s"] > 0 and features["extract_features_uint8_images_per_s"] > 0
    assert checks["input_pipeline_gpu"]["images_per_s"] > 0 and checks["input_pipeline_gpu"]["images"] >= 16
    end = checks["end_to_end"]
    assert end["from_jpeg_folder_step_s"] > 0 and end["anchor_from_gpu_tensors_step_s"] > 0


def test_official_topk_band_draws_inside_the_ring():
    import torch

    similarity = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    ranks = similarity.argsort(dim=1, descending=True).argsort(dim=1)
    drawn = official_topk_band(similarity, 0.5, 0.1, 200, torch.Generator().manual_seed(1))
    band = torch.gather(ranks, 1, drawn)
    assert int(band.min()) >= 50 and int(band.max()) < 500
