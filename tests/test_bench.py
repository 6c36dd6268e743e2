"""``zoo.bench`` and ``benchmarks/run_all.py``: counts that agree with hand arithmetic, timings
that are real measurements, and the results tables they write.

The registry's own numbers (``num_params``, ``gmacs``) are checked against every model in
``tests/test_meta.py``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo._registry import get_spec
from zoo.bench import (
    CSV_FIELDS,
    BenchSettings,
    benchmark,
    count_flops,
    cpu_latency,
    cuda_latency,
    machine_id,
    onnxruntime_latency,
    paper_setting,
)
from zoo.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _run_all_module():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Attention(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)

    def forward(self, x):  # (1, N, d)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return (q @ k.transpose(1, 2)).softmax(-1) @ v


class Allocates(nn.Module):
    """Holds 256 MiB of float32 during its forward."""

    def forward(self, x):
        big = torch.ones(64 * 1024 * 1024)
        return x + big[:1].sum()


# -- counting --------------------------------------------------------------------------------------


def test_a_convolution_counts_two_flops_per_multiply_accumulate():
    # Conv3d 2→4, 3³ kernel, padding 1, on 8³: 8³ outputs × 4 channels × 2·27 MACs each.
    params, flops = count_flops(lambda: nn.Conv3d(2, 4, 3, padding=1), (2, 8, 8, 8))
    assert params == 4 * 2 * 27 + 4
    assert flops == 2 * (8**3 * 4 * 2 * 27)


def test_attention_matmuls_are_counted():
    n, d = 10, 8
    _, flops = count_flops(lambda: Attention(d), (n, d))
    projection = n * d * 3 * d
    scores = n * n * d
    weighted_sum = n * n * d
    assert flops == 2 * (projection + scores + weighted_sum)


def test_paper_setting_comes_from_the_registry_or_says_it_does_not():
    spec = get_spec("swinvit2d-c48")
    over, shape, train, declared = paper_setting(spec)
    assert (over, shape, train, declared) == ({}, tuple(spec.input_size), False, False)
    declared_spec = dataclasses.replace(
        spec,
        meta={
            **spec.meta,
            "paper_setting": {"input_size": (1, 64, 64), "model_args": {"img_size": 64}, "train_mode": True},
        },
    )
    assert paper_setting(declared_spec) == ({"img_size": 64}, (1, 64, 64), True, True)


# -- timing and memory ---------------------------------------------------------------------------


def test_cpu_peak_memory_sees_what_the_forward_allocates():
    _, _, rise = cpu_latency(Allocates(), torch.zeros(1), warmup=1, repeats=2)
    assert 200 < rise < 2048  # 256 MiB held by the forward, not counted twice


def test_onnxruntime_latency_times_the_exported_graph(tmp_path):
    from zoo.export import ExportSettings, to_onnx

    r = to_onnx(
        nn.Conv3d(1, 2, 3, padding=1).eval(),
        tmp_path / "c.onnx",
        ExportSettings(input_shape=(1, 8, 8, 8), exporter="torchscript"),
    )
    ms = onnxruntime_latency(r.path, torch.randn(1, 1, 8, 8, 8), warmup=1, repeats=3)
    assert 0 < ms < 10_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_timing_refuses_clearly_without_a_gpu():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        cuda_latency(nn.Linear(2, 2), torch.zeros(1, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_cuda_timing_uses_events_and_reports_peak_memory(bf16):
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = nn.Conv3d(1, 8, 3, padding=1)
    ms, peak = cuda_latency(model, torch.randn(1, 1, 64, 64, 64), bf16=bf16, warmup=2, repeats=5)
    assert ms > 0
    assert peak >= 64**3 * 8 * (2 if bf16 else 4) / 2**20  # at least the output


def test_benchmark_measures_a_registered_model():
    r = benchmark("swinvit2d-c48", BenchSettings(input_shape=(1, 32, 32), warmup=1, repeats=2, onnx=False))
    spec = get_spec("swinvit2d-c48")
    assert r.params == spec.meta["num_params"]
    assert r.input_shape == "1×32×32"
    assert r.gmacs == pytest.approx(r.gflops / 2)
    # 32² is a ninth of the registered 96²; window padding (7×7 windows) keeps it above a ninth.
    assert spec.meta["gmacs"] / 9 < r.gmacs < spec.meta["gmacs"]
    assert r.cpu_ms > 0 and r.cpu_threads == torch.get_num_threads()
    if not torch.cuda.is_available():
        assert r.cuda_fp32_ms is None and r.cuda_error == ""
    else:
        assert r.cuda_fp32_ms > 0 and r.cuda_bf16_ms is not None


def test_an_exported_file_is_timed_as_the_baseline_in_the_same_rounds(tmp_path):
    pytest.importorskip("onnxruntime")
    from zoo.export import ExportSettings, to_onnx

    with pytest.raises(ValueError, match="expected an exported .onnx file"):
        benchmark(
            "swinvit2d-c48", BenchSettings(input_shape=(1, 32, 32), baseline_onnx=tmp_path / "missing.onnx")
        )
    torch.manual_seed(0)
    # the TorchScript exporter: quicker, and a graph other than the timed dynamo one
    old = to_onnx(
        "swinvit2d-c48",
        tmp_path / "old.onnx",
        ExportSettings(input_shape=(1, 32, 32), exporter="torchscript", check=False),
    )
    r = benchmark(
        "swinvit2d-c48",
        BenchSettings(
            input_shape=(1, 32, 32),
            warmup=1,
            repeats=2,
            baseline_onnx=old.path,
            baseline_label="before",
            cuda=False,
        ),
    )
    assert r.timing == "alternating" and r.onnx_error == ""
    assert r.cpu_ms > 0 and r.ort_ms > 0 and r.ort_baseline_ms > 0
    assert r.ort_baseline_graph == "before" and r.ort_baseline_opset == 17 and r.onnx_opset == 23


def test_machine_id_is_a_file_name():
    m = machine_id()
    assert m and "/" not in m and " " not in m


# -- command line and results tables ---------------------------------------------------------------


def test_cli_bench_prints_size_and_latency(capsys):
    rc = main(
        ["bench", "swinvit2d-c48", "--input-shape", "1", "32", "32", "--no-onnx", "--repeats", "1", "-q"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "swinvit2d-c48" in out and "6.31M" in out


def test_results_table_puts_our_numbers_next_to_the_papers(tmp_path, monkeypatch):
    run_all = _run_all_module()
    monkeypatch.setattr(run_all, "RESULTS_DIR", tmp_path)
    row = {k: "" for k in CSV_FIELDS}
    row.update(
        name="qtunet-t",
        family="qtunet",
        input_shape="1×96×96×96",
        params="6400000",
        gmacs="30",
        gflops="60",
        paper_setting="4×128×128×128 train-mode",
        paper_setting_declared="True",
        params_paper_setting="6500000",
        gmacs_paper_setting="32.5",
        paper_params="6400000",
        paper_gmacs="32.5",
        cpu_ms="1000",
        cpu_threads="2",
        ort_ms="500",
        onnx_exporter="dynamo",
        onnx_max_rel="1e-6",
        flops_convention="fvcore MACs",
    )
    run_all.write_csv(tmp_path / "m.csv", [row])
    md = run_all.write_markdown(tmp_path / "RESULTS.md").read_text()
    line = next(
        ln for ln in md.splitlines() if ln.startswith("| qtunet-t |") and "paper" not in ln and "4×128" in ln
    )
    assert "| 1.000 |" in line  # GMACs at the paper's setting / paper GMACs
    assert "| 1.016 |" in line  # params at the paper's setting / paper params
    assert "| 0.500 |" in md  # onnxruntime / torch
    assert "fvcore MACs" in md


def test_run_all_benchmarks_in_a_subprocess_and_writes_csv_and_markdown(tmp_path, monkeypatch):
    run_all = _run_all_module()
    monkeypatch.setattr(run_all, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(run_all, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(
        run_all, "write_markdown", lambda path=tmp_path / "RESULTS.md", f=run_all.write_markdown: f(path)
    )
    rc = run_all.main(
        ["swinvit2d-c48", "--machine", "ci", "--no-onnx", "--no-cuda", "--warmup", "0", "--repeats", "1"]
    )
    assert rc == 0
    with (tmp_path / "results" / "ci.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == CSV_FIELDS
    assert [r["name"] for r in rows] == ["swinvit2d-c48"]
    assert int(rows[0]["params"]) == get_spec("swinvit2d-c48").meta["num_params"]
    assert float(rows[0]["cpu_ms"]) > 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## ci" in md and "| swinvit2d-c48 |" in md


def test_the_papers_gmacs_stand_beside_ours_at_the_same_setting_or_name_it():
    from zoo.bench import BenchResult, paper_gmacs_cell

    at_paper = BenchResult(
        "m", "f", "1×96×96×96", 10, 64.0, 32.0, paper_setting="1×96×96×96", paper_setting_declared=True,
        params_paper_setting=10, gmacs_paper_setting=32.0, paper_gmacs=32.5,
    )  # fmt: skip
    assert paper_gmacs_cell(at_paper) == "32.50 (0.985×)"
    smaller = dataclasses.replace(at_paper, input_shape="1×64×64×64", gflops=24.76, gmacs=12.38)
    cell = paper_gmacs_cell(smaller)  # the bug: "32.50 (0.985×)" beside 12.38, a ratio from another input
    assert cell == "32.50 at 1×1×96×96×96: ours 32.00 (0.985×)"  # batch 1, one channel
    assert paper_gmacs_cell(dataclasses.replace(at_paper, paper_gmacs=None)) == "—"
