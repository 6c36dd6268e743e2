"""Devices, precisions and onnxruntime providers: what runs where, and what is refused before any work.

This machine has no GPU: the CUDA paths are checked by what they refuse and by what they choose
(device indices, providers, where the stitched output lives); the GPU figures come from
``benchmarks/gpu_check.py`` on a lent GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.cli import main
from zoo.inference import resolve_device, resolve_precision, sliding_window_predict, stitch_device

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)


# -- choosing a device -----------------------------------------------------------------------------


@needs_no_cuda
def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_in_one_line():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=r"is not available: .*use --device cpu") as e:
            resolve_device(name)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "tpu"])
def test_unknown_device_names_are_refused_naming_the_choices(name):
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def _fake_gpus(monkeypatch, n):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_under_torchrun_each_rank_takes_its_local_rank_gpu(monkeypatch):
    _fake_gpus(monkeypatch, 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"4 CUDA GPU\(s\) visible \(cuda:0 … cuda:3\)"):
        resolve_device("cuda:4")


def test_fp16_needs_cuda_and_bf16_runs_on_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None and resolve_precision(None, cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        resolve_precision("fp8", cpu)


def test_the_stitched_output_stays_on_the_gpu_only_when_it_fits_a_quarter_of_its_free_memory():
    gpu = torch.device("cuda", 0)
    shape = (1, 1, 200, 200, 200)  # 8 M voxels; 14 classes + 2 buffers: 512 MB of float32
    assert stitch_device(shape, 14, gpu, free_bytes=4 * 10**9) == gpu
    assert stitch_device(shape, 14, gpu, free_bytes=1 * 10**9) == torch.device("cpu")
    assert stitch_device(shape, 14, torch.device("cpu")) == torch.device("cpu")


# -- refused before anything is read -----------------------------------------------------------------


@needs_no_cuda
@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "qtunet-t", "--no-weights", "-i", "{input}", "-o", "{out}", "--device", "cuda"],
        ["predict", "qtunet-t", "--no-weights", "-i", "{input}", "-o", "{out}", "--precision", "fp16"],
        ["demo", "qtunet-t", "--device", "cuda:0"],
        ["bench", "qtunet-t", "--device", "cuda"],
        ["export", "qtunet-t", "-o", "{out}.onnx", "--device", "cuda"],
    ],
    ids=["predict", "predict-fp16-on-cpu", "demo", "bench", "export"],
)
def test_a_device_that_is_not_there_is_refused_before_any_file_is_opened(argv, tmp_path, monkeypatch, capsys):
    import builtins

    import nibabel

    from zoo import plan as plan_module

    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not read")
    opened = []
    real_open = builtins.open

    def spy_open(file, *args, **kwargs):
        if str(file).startswith(str(tmp_path)):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(nibabel, "load", lambda *a, **k: pytest.fail("the input was read"))
    monkeypatch.setattr(plan_module, "plan", lambda *a, **k: pytest.fail("the model was planned"))
    argv = [a.format(input=scan, out=tmp_path / "seg.nii.gz") for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert "cuda" in err or "fp16" in err
    assert opened == [] and not (tmp_path / "seg.nii.gz").exists()


# -- the same labels on the CPU; bf16 close to them --------------------------------------------------


@pytest.fixture(scope="module")
def small_qtunet():
    torch.manual_seed(0)
    return zoo.create("qtunet-t", img_size=32, num_classes=4, embed_dim=12).eval()


def test_naming_the_cpu_changes_nothing(small_qtunet):
    x = torch.randn(1, 1, 40, 44, 36)
    plain = sliding_window_predict(small_qtunet, x, overlap=0.25)
    named = sliding_window_predict(small_qtunet, x, overlap=0.25, precision="fp32", stitch_on="cpu")
    assert torch.equal(plain, named)


def test_bf16_autocast_on_the_cpu_deviates_little_and_returns_float32(small_qtunet, capsys):
    torch.manual_seed(1)
    x = torch.randn(1, 1, 40, 44, 36)
    ref = sliding_window_predict(small_qtunet, x, overlap=0.25)
    got = sliding_window_predict(small_qtunet, x, overlap=0.25, precision="bf16")
    assert got.dtype == torch.float32
    rel = float((got - ref).abs().max() / ref.abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    with capsys.disabled():
        print(
            f"\nbf16 on the CPU, qtunet-t (embed 12, 32³ windows): max rel logit deviation {rel:.2e}, "
            f"label agreement {agree:.4f}"
        )
    assert 0 < rel < 0.1, "bf16 changed nothing (autocast not applied) or far too much"
    assert agree > 0.9


def test_predict_with_device_cpu_writes_the_labels_of_the_default_path(small_qtunet, tmp_path):
    import nibabel as nib

    from zoo.predict import PredictSettings, predict_nifti, sample_volume_path

    mni = sample_volume_path()
    base = PredictSettings(spacing_mm=(6.0, 6.0, 6.0), allow_untrained_head=True)
    predict_nifti(small_qtunet, mni, tmp_path / "a.nii.gz", base, progress=False)
    import dataclasses

    on_cpu = dataclasses.replace(base, device="cpu", precision="fp32", stitch_on="cpu")
    predict_nifti(small_qtunet, mni, tmp_path / "b.nii.gz", on_cpu, progress=False)
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj)
    assert len(np.unique(a)) >= 2
    np.testing.assert_array_equal(a, b)


# -- onnxruntime providers -----------------------------------------------------------------------------


def test_onnx_on_a_gpu_takes_the_cuda_provider_and_tensorrt_first_when_asked():
    pytest.importorskip("onnxruntime")
    from zoo.onnx_runtime import onnx_providers

    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers, note = onnx_providers("cuda:1", available=gpu_build)
    assert providers == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert "CUDA (GPU 1)" in note
    providers, note = onnx_providers("cuda:0", tensorrt=True, available=gpu_build)
    assert [p[0] for p in providers[:2]] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    providers, _ = onnx_providers("cpu", available=gpu_build)
    assert providers == ["CPUExecutionProvider"]


def test_onnx_on_a_gpu_without_the_gpu_build_falls_back_to_the_cpu_and_names_the_extra():
    pytest.importorskip("onnxruntime")
    from zoo.onnx_runtime import onnx_providers

    providers, note = onnx_providers("cuda:0", tensorrt=True, available=["CPUExecutionProvider"])
    assert providers == ["CPUExecutionProvider"]
    assert "running on the CPU instead" in note and "medzoo[onnx-gpu]" in note


def test_demo_says_which_device_and_precision_it_used(tmp_path, capsys):
    pytest.importorskip("nilearn")
    assert (
        main(["demo", "qtunet-t", "--spacing", "8", "--device", "cpu", "-o", str(tmp_path / "s.nii.gz")]) == 0
    )
    out = capsys.readouterr().out
    assert "s on cpu (CPU, fp32)" in out
