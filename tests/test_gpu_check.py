"""benchmarks/gpu_check.py rehearsed on the CPU: every check runs end to end and writes its rows."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu_and_writes_rows_run_all_reads(gpu_check, tmp_path):
    import run_all

    out = tmp_path / "gpu-rehearsal.csv"
    argv = ["--device", "cpu", "--size", "reduced", "--models", "fmunet", "--repeats", "2"]
    rc = gpu_check.main([*argv, "--small-study", "--study-cases", "1", "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    checks = {(r["check"], r["metric"]) for r in rows}
    for want in [
        ("parity", "max_rel_vs_cpu_fp32"),
        ("latency", "median_ms"),
        ("onnx", "max_rel_vs_torch_cpu"),
        ("study", "speedup"),
        ("study", "differing_label_voxels"),
    ]:
        assert want in checks, f"{want} missing from {sorted(checks)}"
    fp32 = next(r for r in rows if r["check"] == "parity" and r["precision"] == "fp32")
    assert float(fp32["value"]) == 0.0  # the CPU against itself: the same kernels, the same numbers
    bf16 = next(
        r for r in rows if r["check"] == "parity" and r["precision"] == "bf16" and "max_rel" in r["metric"]
    )
    assert 0 < float(bf16["value"]) < 0.1
    onnx_rel = next(r for r in rows if r["metric"] == "max_rel_vs_torch_cpu")
    assert float(onnx_rel["value"]) <= 1e-4
    # run_all.py turns the file into RESULTS.md's GPU section
    (tmp_path / "gpu-test-machine.csv").write_text(out.read_text())
    section = "\n".join(run_all.gpu_section(tmp_path))
    assert "### test-machine (cpu)" in section and "| parity | fmunet |" in section


def test_without_gpu_rows_results_say_they_are_missing(gpu_check, tmp_path):
    import run_all

    assert "The GPU rows are missing" in "\n".join(run_all.gpu_section(tmp_path))


def test_gpu_check_refuses_a_device_that_is_not_there(gpu_check, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(ValueError, match="not available"):
        gpu_check.main(["--device", "cuda", "--out", str(tmp_path / "x.csv")])
    assert not (tmp_path / "x.csv").exists()
