"""The GPU check script runs end to end at smoke sizes on CPU (the GPU numbers need a GPU)."""

from __future__ import annotations

import json

from benchmarks.gpu import main


def test_gpu_checks_script_runs_at_smoke_sizes(tmp_path):
    assert main(["--smoke", "--only", "ring,features", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_checks.json").read_text())
    checks = {check["check"]: check for check in results["checks"]}
    assert set(checks) == {"ring_selection", "feature_extraction"}
    assert checks["ring_selection"]["matmul_ms"] > 0 and checks["ring_selection"]["exact_ms"] > 0
    assert checks["feature_extraction"]["extract_features_images_per_s"] > 0
