"""Export paths beside the default one: dynamic spatial axes, older runtimes, stages said as they run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.export import ExportSettings, min_onnxruntime, to_onnx

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

_PREP = {
    "orientation": "RAS",
    "spacing_mm": [6.0, 6.0, 6.0],
    "intensity_transform": {"kind": "clip_scale", "a_min": 0, "a_max": 300, "b_min": -1, "b_max": 1},
}


@pytest.mark.slow  # ~35 s: an export checked at two sizes, then two whole-volume predictions
def test_a_dynamic_spatial_export_predicts_another_window_size_with_the_labels_of_pytorch(tmp_path, capsys):
    import nibabel as nib

    from zoo.onnx_runtime import load_onnx
    from zoo.predict import PredictSettings, predict_nifti, sample_volume_path

    torch.manual_seed(0)
    model = zoo.create("fmunet", feature_chns=(4, 8, 16, 32, 64), num_classes=3).eval()
    model.pretrained_cfg["preprocessing"] = dict(_PREP)
    path = tmp_path / "fmunet.onnx"
    r = to_onnx(
        model, path, ExportSettings(input_shape=(1, 32, 32, 32), dynamic_spatial=True, batch_sizes=(1,))
    )
    out = capsys.readouterr().out
    assert "export: tracing with the dynamo exporter" in out and "export: done (" in out
    shapes = [p.input_shape for p in r.parity]
    assert (
        r.dynamic_spatial and len(shapes) == 2 and shapes[0] == (1, 1, 32, 32, 32) and shapes[1] != shapes[0]
    )
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["depth", "height", "width"]
    # 64³ windows: a size neither traced nor checked at export (those were 32³ and 48³)
    asked = PredictSettings(roi_size=(64, 64, 64), overlap=0.25, allow_untrained_head=True)
    mni = sample_volume_path()
    predict_nifti(model, mni, tmp_path / "torch.nii.gz", asked, progress=False)
    predict_nifti(load_onnx(path), mni, tmp_path / "onnx.nii.gz", asked, progress=False)
    a = np.asarray(nib.load(tmp_path / "torch.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "onnx.nii.gz").dataobj)
    assert len(np.unique(a)) >= 2, "a constant label map would prove nothing"
    differ = int((a != b).sum())
    with capsys.disabled():
        print(f"\ndynamic-spatial fmunet, 64³ windows: {differ} of {a.size} label voxels differ from PyTorch")
    # Random weights leave near-ties between classes: a flip there is float rounding, not a wrong graph.
    assert differ <= 1e-3 * a.size
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        ref = model(x)
    got = load_onnx(path)(x)
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-4


def test_a_model_built_for_one_size_refuses_dynamic_spatial_axes_saying_why(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("qtunet-t", img_size=32, num_classes=2, embed_dim=12).eval()
    with pytest.raises(ValueError, match=r"cannot export dynamic spatial axes: .*built for one input size"):
        to_onnx(model, tmp_path / "q.onnx", ExportSettings(dynamic_spatial=True), verbose=False)
    assert not (tmp_path / "q.onnx").exists()


@pytest.fixture(scope="module")
def small_qtunet():
    torch.manual_seed(0)
    return zoo.create("qtunet-t", img_size=32, num_classes=2, embed_dim=12).eval()


def test_an_older_opset_spells_attention_out_and_names_its_oldest_onnxruntime(small_qtunet, tmp_path):
    from zoo.onnx_runtime import read_onnx_metadata

    path = tmp_path / "q20.onnx"
    r = to_onnx(small_qtunet, path, ExportSettings(opset=20, batch_sizes=(1,)), verbose=False)
    assert r.opset == 20 and r.max_rel <= 1e-4
    assert "Attention" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert read_onnx_metadata(path)["min_onnxruntime"] == "1.17"


def test_the_default_opset_fuses_attention_and_the_file_names_onnxruntime_1_23(tiny_export):
    from zoo.export import DYNAMO_OPSET
    from zoo.onnx_runtime import read_onnx_metadata

    m = onnx.load(str(tiny_export[1]))
    assert DYNAMO_OPSET == 23 and {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {23}
    assert "Attention" in {n.op_type for n in m.graph.node}
    assert read_onnx_metadata(tiny_export[1])["min_onnxruntime"] == "1.23"


def test_files_without_the_runtime_key_still_read_and_a_newer_requirement_is_refused(tiny_export, tmp_path):
    from zoo.onnx_runtime import check_runtime_version, load_onnx, read_onnx_metadata

    m = onnx.load(str(tiny_export[1]))
    kept = [p for p in m.metadata_props if p.key != "medzoo.min_onnxruntime"]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(m, str(old))
    assert read_onnx_metadata(old)["min_onnxruntime"] is None
    assert load_onnx(old).num_classes == 4
    with pytest.raises(ValueError, match=r"needs onnxruntime >= 99\.0, found .*--opset 20"):
        check_runtime_version("99.0", "q.onnx")


def test_the_oldest_runtime_follows_the_opset_and_the_attention_operator():
    assert min_onnxruntime(17, ["Conv"]) == "1.12"
    assert min_onnxruntime(20, ["Conv", "Softmax"]) == "1.17"
    assert min_onnxruntime(20, ["Attention"]) == "1.23"
