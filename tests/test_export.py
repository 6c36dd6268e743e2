"""ONNX export: a dynamic batch axis, and onnxruntime matching PyTorch at every declared shape.

The default run exports one model per family (the one with the smallest graph, at a reduced but
valid size);
``-m slow`` exports every registered model at the reduced size and at its full size.
"""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import zoo
from tests.conftest import EXPORT_PREP
from zoo._registry import iter_specs
from zoo.cli import main
from zoo.export import EXPORTERS, ExportSettings, OnnxParityError, reduced_config, to_onnx
from zoo.onnx_runtime import onnx_session

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SPECS = [s for s in iter_specs() if s.input_size is not None]


@functools.cache
def _graph_size(name: str) -> tuple[int, int]:
    """(submodules, parameters): export time grows with the first."""
    spec = next(s for s in SPECS if s.name == name)
    with torch.device("meta"):
        model = spec.builder(**spec.model_args)
    return sum(1 for _ in model.modules()), sum(p.numel() for p in model.parameters())


def _representatives() -> list:
    """The model of each family with the smallest graph: the default run exports these."""
    best: dict[str, object] = {}
    for s in SPECS:
        cur = best.get(s.family)
        if cur is None or _graph_size(s.name) < _graph_size(cur.name):
            best[s.family] = s
    return [best[f] for f in sorted(best)]


REPRESENTATIVES = _representatives()
OTHERS = [s for s in SPECS if s not in REPRESENTATIVES]


def _ids(specs):
    return [s.name for s in specs]


def _check_export(spec, overrides, shape, tmp_path, batch_sizes=(1, 2)):
    torch.manual_seed(0)
    model = zoo.create(spec.name, **overrides)
    path = tmp_path / f"{spec.name}.onnx"
    r = to_onnx(model, path, ExportSettings(input_shape=shape, batch_sizes=batch_sizes))
    assert r.exporter in EXPORTERS
    assert [p.input_shape for p in r.parity] == [(b, *shape) for b in batch_sizes]
    assert all(p.rel <= 1e-4 for p in r.parity), [str(p) for p in r.parity]
    dims = onnx_session(path).get_inputs()[0].shape
    assert isinstance(dims[0], str), f"batch axis should be dynamic, got {dims}"
    assert list(dims[1:]) == list(shape), "spatial axes stay fixed to the traced size"
    return r


# -- every family, reduced size --------------------------------------------------------------------


@pytest.mark.parametrize("spec", REPRESENTATIVES, ids=_ids(REPRESENTATIVES))
def test_smallest_model_of_each_family_exports_and_matches_onnxruntime(spec, tmp_path):
    overrides, shape = reduced_config(spec)
    # Traced at batch 2 and run at batch 1: a batch size baked into the graph fails here.
    r = _check_export(spec, overrides, shape, tmp_path, batch_sizes=(1,))
    print(f"{spec.name} at {shape}: {r.exporter} exporter, opset {r.opset}, max rel {r.max_rel:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("spec", OTHERS, ids=_ids(OTHERS))
def test_every_model_exports_and_matches_onnxruntime_at_reduced_size(spec, tmp_path):
    overrides, shape = reduced_config(spec)
    _check_export(spec, overrides, shape, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=_ids(SPECS))
def test_every_model_exports_and_matches_onnxruntime_at_full_size(spec, tmp_path):
    _check_export(spec, {}, tuple(spec.input_size), tmp_path)


def test_reduced_sizes_are_smaller_than_the_registered_ones():
    for spec in REPRESENTATIVES:
        overrides, shape = reduced_config(spec)
        assert len(shape) == len(spec.input_size)
        assert np.prod(shape) < np.prod(spec.input_size), spec.name
        assert all(a <= b for a, b in zip(shape, spec.input_size, strict=True)), spec.name


# -- the mechanism, on small modules ---------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.norm = nn.InstanceNorm3d(3, affine=True)

    def forward(self, x):
        return self.norm(self.conv(x)).softmax(1)


class NestedOutputs(TinyNet):
    def forward(self, x):
        y = self.conv(x)
        return y, [y.mean((2, 3, 4)), y.amax((2, 3, 4))]


class DriftsAfterTracing(TinyNet):
    """Computes something else after its first call (the reference), i.e. in the traced graph."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        return y if self.calls <= 1 else y * 1.01


class CachedPositionTable(TinyNet):
    """Caches a size-dependent constant, as Swin caches its shifted-window masks."""

    def __init__(self):
        super().__init__()
        self._cache: dict[int, torch.Tensor] = {}

    def forward(self, x):
        n = int(x.shape[-1])
        if n not in self._cache:
            self._cache[n] = torch.linspace(0, 1, n)
        return self.conv(x) * self._cache[n]


class DataDependentBranch(TinyNet):
    def forward(self, x):
        y = self.conv(x)
        if y.abs().sum() > -1:  # always true, but torch.export cannot know
            return y * 2
        return y


def test_batch_axis_is_dynamic_and_spatial_axes_are_fixed(tmp_path):
    model = TinyNet().eval()
    path = tmp_path / "tiny.onnx"
    r = to_onnx(model, path, ExportSettings(input_shape=(1, 6, 8, 10), exporter="dynamo"))
    assert r.exporter == "dynamo" and not r.dynamic_spatial
    session = onnx_session(path)
    x = torch.randn(3, 1, 6, 8, 10)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": torch.randn(1, 1, 6, 8, 12).numpy()})


def test_several_declared_shapes_make_spatial_axes_dynamic_and_each_is_checked(tmp_path):
    r = to_onnx(
        TinyNet().eval(), tmp_path / "tiny.onnx", ExportSettings(input_shapes=[(1, 6, 8, 10), (1, 10, 8, 6)])
    )
    assert r.dynamic_spatial
    assert sorted(p.input_shape for p in r.parity) == sorted(
        [(1, 1, 6, 8, 10), (2, 1, 6, 8, 10), (1, 1, 10, 8, 6), (2, 1, 10, 8, 6)]
    )
    dims = onnx_session(r.path).get_inputs()[0].shape
    assert isinstance(dims[2], str) and isinstance(dims[4], str)


def test_a_graph_that_cannot_run_at_another_declared_size_fails_loudly(tmp_path):
    path = tmp_path / "cached.onnx"
    with pytest.raises(OnnxParityError, match=r"\(2, 1, 6, 6, 12\)|\(1, 1, 6, 6, 12\)"):
        to_onnx(
            CachedPositionTable().eval(), path, ExportSettings(input_shapes=[(1, 6, 6, 8), (1, 6, 6, 12)])
        )
    assert not path.exists()


def test_an_export_that_differs_from_pytorch_fails_loudly_and_leaves_no_file(tmp_path):
    path = tmp_path / "drift.onnx"
    with pytest.raises(OnnxParityError, match="differs from PyTorch"):
        to_onnx(
            DriftsAfterTracing().eval(),
            path,
            ExportSettings(input_shape=(1, 6, 6, 6), exporter="torchscript", batch_sizes=(1,)),
        )
    assert not path.exists()


class Overflows(TinyNet):
    def forward(self, x):
        return self.conv(x) * float("inf") * 0.0  # NaN everywhere


def test_instance_norm_over_a_million_voxels_is_exported_as_accurately_as_pytorch_computes_it(tmp_path):
    # onnxruntime's own InstanceNormalization is ~1e-5 off over 2^20 voxels (FMUNet's full-size maps)
    norm = nn.InstanceNorm3d(2, affine=True).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 2.0]))
        norm.bias.copy_(torch.tensor([-1.0, 0.25]))
    path = tmp_path / "norm.onnx"
    to_onnx(
        norm,
        path,
        ExportSettings(input_shape=(2, 64, 128, 128), batch_sizes=(1, 2), exporter="dynamo"),
        verbose=False,
    )
    x = torch.randn(2, 2, 64, 128, 128, generator=torch.Generator().manual_seed(3)) * 2 + 5
    ref = F.instance_norm(x.double(), weight=norm.weight.double(), bias=norm.bias.double(), eps=norm.eps)
    session = onnx_session(path)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]).double()
    assert float((got - ref).abs().max() / ref.abs().max()) < 3e-6


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv3d(6, 6, 5, padding=2, groups=6),  # LKA's depth-wise 5³
        nn.Conv3d(6, 6, 7, padding=9, dilation=3, groups=6),  # LKA's dilated 7³
        nn.Conv3d(4, 4, (3, 5, 1), padding=(1, 2, 0), groups=4),
        nn.Conv3d(5, 7, 3, padding=1),
        nn.Conv3d(3, 4, (1, 3, 3), padding=(0, 1, 1)),  # PCT-Net's in-plane kernel
        nn.Conv3d(3, 4, 5, padding=2, bias=False),
    ],
    ids=["dw5", "dw7-dil3", "dw-anisotropic", "dense3", "dense1x3x3", "dense5-nobias"],
)
def test_3d_convolutions_are_exported_as_2d_ones_computing_the_same(conv, tmp_path):
    from zoo.export_forms import for_export

    torch.manual_seed(0)
    conv = conv.eval()
    form = for_export(copy.deepcopy(nn.Sequential(conv)))[0]
    assert not isinstance(form, nn.Conv3d), "an eligible convolution keeps its 3D form"
    x = torch.randn(2, conv.in_channels, 6, 9, 11)
    with torch.no_grad():
        ref = conv(x)
        for inp in (x, x.to(memory_format=torch.channels_last_3d)):
            assert torch.allclose(form(inp), ref, rtol=1e-5, atol=1e-5)
    # exported with dynamic spatial axes: the slices and reshapes must follow the size
    path = tmp_path / "conv.onnx"
    shapes = [(conv.in_channels, 6, 9, 11), (conv.in_channels, 5, 7, 8)]
    r = to_onnx(conv, path, ExportSettings(input_shapes=shapes), verbose=False)
    assert r.exporter == "dynamo" and all(p.rel <= 1e-5 for p in r.parity), [str(p) for p in r.parity]
    graph = onnx.load(str(path)).graph
    weights = {t.name: len(t.dims) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(weights.get(n.input[1]) == 4 for n in convs), "every Conv should be 2D"


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv3d(4, 4, 3, stride=2, padding=1, groups=4),
        nn.Conv3d(4, 8, 3, padding=1, groups=2),
        nn.Conv3d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv3d(4, 4, 1),
        nn.Conv3d(4, 4, 3),  # no padding: the map shrinks
        nn.Conv3d(4, 4, 3, padding=2, dilation=2),  # dilated dense: left to onnxruntime's 3D Conv
    ],
    ids=["strided", "grouped", "reflect", "1x1x1", "valid", "dense-dilated"],
)
def test_other_3d_convolutions_keep_their_own_form(conv):
    from zoo.export_forms import for_export

    assert for_export(nn.Sequential(conv))[0] is conv


def test_a_model_whose_output_is_not_finite_fails_instead_of_passing(tmp_path):
    with pytest.raises(OnnxParityError, match="non-finite"):
        to_onnx(
            Overflows().eval(),
            tmp_path / "nan.onnx",
            ExportSettings(input_shape=(1, 6, 6, 6), exporter="torchscript", batch_sizes=(1,)),
        )
    assert not (tmp_path / "nan.onnx").exists()


def test_dynamo_failure_falls_back_to_torchscript_and_says_why(tmp_path):
    r = to_onnx(DataDependentBranch().eval(), tmp_path / "dd.onnx", ExportSettings(input_shape=(1, 6, 6, 6)))
    assert r.exporter == "torchscript"
    assert "dynamo export failed" in r.fallback_reason
    assert r.max_rel <= 1e-4


def test_nested_outputs_are_compared_one_by_one(tmp_path):
    r = to_onnx(
        NestedOutputs().eval(),
        tmp_path / "nested.onnx",
        ExportSettings(input_shape=(1, 6, 6, 6), exporter="torchscript"),
    )
    assert all(p.num_outputs == 3 for p in r.parity)


def test_the_models_own_input_check_speaks_before_any_export(tmp_path):
    model = zoo.create("qtunet-t", img_size=32)
    with pytest.raises(ValueError, match="img_size"):
        to_onnx(model, tmp_path / "q.onnx", ExportSettings(input_shape=(1, 64, 64, 64)))
    assert not (tmp_path / "q.onnx").exists()


# -- command line ----------------------------------------------------------------------------------------


def test_cli_export_writes_the_file_and_prints_the_parity(tmp_path, capsys):
    out = tmp_path / "swin.onnx"
    rc = main(
        [
            "export",
            "swinvit2d-c48",
            "-o",
            str(out),
            "--input-shape",
            "1",
            "32",
            "32",
            "--exporter",
            "torchscript",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert "torchscript exporter" in text and "max rel diff" in text
    again = tmp_path / "again.onnx"
    argv = ["export", "swinvit2d-c48", "-o", str(again), "--input-shape", "1", "32", "32", "--exporter"]
    assert main([*argv, "torchscript", "--json"]) == 0
    said = json.loads(capsys.readouterr().out)  # stdout is the one JSON object
    assert (said["path"], said["exporter"]) == (str(again), "torchscript")
    assert said["parity"] and said["parity"][0]["input_shape"][-2:] == [32, 32]
    assert said["max_rel"] <= said["rtol"] and said["max_abs"] >= 0


def test_cli_export_of_a_size_the_model_cannot_take_is_an_error(tmp_path, capsys):
    out = tmp_path / "q.onnx"
    rc = main(
        ["export", "qtunet-t", "--img-size", "32", "--input-shape", "1", "64", "64", "64", "-o", str(out)]
    )
    assert rc == 2
    assert "img_size" in capsys.readouterr().err
    assert not out.exists()


# -- self-describing files, and running them like a model ------------------------------------------------


def test_window_attention_exports_as_fused_attention_without_per_run_mask_tiling(tiny_export):
    import onnx

    ops = [n.op_type for n in onnx.load(str(tiny_export[1])).graph.node]
    # QT-UNet-T: 4 encoder stages of 2 blocks plus the QT decoder's attention blocks.
    assert ops.count("Attention") >= 8
    assert "Softmax" not in ops  # no attention left as MatMul/Add/Softmax/MatMul
    assert "Tile" not in ops  # masks are (1, heads, N, N) constants broadcast over windows·batch


def test_window_attention_takes_3d_inputs_with_no_head_transposes_around_it(tiny_export):
    import onnx

    graph = onnx.load(str(tiny_export[1])).graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    attention = [n for n in graph.node if n.op_type == "Attention"]
    assert attention
    for node in attention:
        attrs = {a.name: a.i for a in node.attribute}
        # 3D form: the heads are attributes (QT-UNet-T: 3, 6, 12, 24 heads by stage)
        assert attrs.get("q_num_heads") in (3, 6, 12, 24), attrs
        assert attrs["kv_num_heads"] == attrs["q_num_heads"], attrs
        # q, k, v come straight from their projections (through reshapes), never from a Transpose
        for name in node.input[:3]:
            src = producer.get(name)
            while src is not None and src.op_type in ("Reshape", "Slice"):
                src = producer.get(src.input[0])
            assert src is not None and src.op_type in ("MatMul", "Add", "Gemm"), (node.name, src)
        assert not any(c.op_type == "Transpose" for c in consumers.get(node.output[0], []))


def test_exported_file_describes_itself_and_passes_the_checker(tiny_export):
    import onnx

    from zoo.onnx_runtime import read_onnx_metadata

    _, path = tiny_export
    onnx.checker.check_model(str(path))
    md = read_onnx_metadata(path)
    assert md["version"] == zoo.__version__ and md["model"] == "qtunet-t" and md["family"] == "qtunet"
    assert md["weights_tag"] == "" and md["weights"] is None  # random weights say so
    assert md["preprocessing"] == EXPORT_PREP
    assert md["labels"] == ["background", "grey", "white", "csf"] and md["num_classes"] == 4
    assert md["sliding_window"] == {"roi_size": [32, 32, 32], "overlap": 0.25}
    assert md["input_axes"] == ["batch", "channel", "x", "y", "z"] and md["axis_order"] == "xyz"
    assert md["input_size"] == [1, 32, 32, 32]
    assert "qtunet-t" in md["doc_string"] and "random (untrained) weights" in md["doc_string"]
    assert onnx_session(path).get_inputs()[0].shape[0] == "batch"


def test_the_preprocessing_is_rebuilt_from_the_file_alone(tiny_export):
    from zoo.onnx_runtime import read_onnx_metadata
    from zoo.predict import intensity_transform

    md = read_onnx_metadata(tiny_export[1])
    normalise = intensity_transform(md["preprocessing"]["intensity_transform"])
    x = torch.tensor([[[[-50.0, 0.0, 150.0, 300.0, 900.0]]]])
    # clip to [0, 300], then onto [-1, 1]
    torch.testing.assert_close(normalise(x), torch.tensor([[[[-1.0, -1.0, 0.0, 1.0, 1.0]]]]))
    assert md["preprocessing"]["spacing_mm"] == [6.0, 6.0, 6.0]


def test_weights_tag_and_digest_are_recorded(tmp_path):
    model = TinyNet().eval()
    model.pretrained_cfg = {
        "name": "tiny",
        "weights": {"source": "file", "id": "w.pt", "tag": "mine", "sha256": "ab" * 32, "covers": "full"},
    }
    path = tmp_path / "t.onnx"
    to_onnx(model, path, ExportSettings(input_shapes=[(1, 6, 8, 10), (1, 8, 10, 12)]), verbose=False)
    from zoo.onnx_runtime import read_onnx_metadata

    md = read_onnx_metadata(path)
    assert md["weights_tag"] == "mine" and md["weights_sha256"] == "ab" * 32
    assert md["weights"]["id"] == "w.pt"
    assert onnx_session(path).get_inputs()[0].shape == ["batch", 1, "depth", "height", "width"]


def test_an_onnx_file_runs_like_the_model(tiny_export):
    from zoo.onnx_runtime import load_onnx

    model, path = tiny_export
    onnx_model = load_onnx(path)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = model(x)
    got = onnx_model.eval()(x)
    assert isinstance(got, torch.Tensor) and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert onnx_model.pretrained_cfg["preprocessing"] == EXPORT_PREP
    with pytest.raises(ValueError, match=r"takes inputs of shape"):
        onnx_model(torch.randn(1, 1, 32, 32, 16))
    with pytest.raises(RuntimeError, match="inference only"):
        onnx_model.train()


def test_predict_through_onnx_gives_the_labels_of_the_pytorch_path(tiny_export, tmp_path, capsys):
    import nibabel as nib

    from zoo.predict import predict_nifti, sample_volume_path

    model, path = tiny_export
    mni = sample_volume_path()
    ref = predict_nifti(model, mni, tmp_path / "seg_torch.nii.gz", progress=False)
    rc = main(["predict", str(path), "-q", "-i", str(mni), "-o", str(tmp_path / "seg_onnx.nii.gz")])
    assert rc == 0
    a = np.asarray(nib.load(tmp_path / "seg_torch.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "seg_onnx.nii.gz").dataobj)
    assert len(np.unique(a)) >= 2, "a constant label map would prove nothing"
    np.testing.assert_array_equal(b, a)
    assert ref.roi_size == (32, 32, 32)
    assert "windows of 32×32×32" in capsys.readouterr().out


def test_files_that_are_not_medzoo_exports_are_refused_clearly(tmp_path):
    import onnx

    from zoo.onnx_runtime import load_onnx

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(ValueError, match="not an ONNX file"):
        load_onnx(junk)
    bare = tmp_path / "bare.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(bare))
    with pytest.raises(ValueError, match=r"expected medzoo metadata .* missing medzoo.version"):
        load_onnx(bare)
    with pytest.raises(ValueError, match="no such file"):
        load_onnx(tmp_path / "absent.onnx")


# -- exporting what a run or a tag holds ----------------------------------------------------------------


def test_export_of_a_run_folder_uses_the_runs_window(tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from zoo.onnx_runtime import read_onnx_metadata

    torch.manual_seed(0)
    args = {"feature_chns": [4, 8, 16, 32, 64], "num_classes": 2}
    model = zoo.create("fmunet", feature_chns=(4, 8, 16, 32, 64), num_classes=2)
    run = tmp_path / "run"
    run.mkdir()
    save_file(model.state_dict(), str(run / "model.safetensors"))
    window = {"roi_size": [32, 48, 32], "overlap": 0.25}
    (run / "config.json").write_text(
        json.dumps({"model_name": "fmunet", "model_args": args, "sliding_window": window})
    )
    out = tmp_path / "run.onnx"
    # parity is the per-family test's business: here, which window the file is built for
    assert main(["export", "fmunet", "--checkpoint", str(run), "-o", str(out), "--no-check"]) == 0
    md = read_onnx_metadata(out)
    # the registered fmunet input is 64×128×128: the run's window wins
    assert md["input_size"] == [1, 32, 48, 32] and md["sliding_window"] == window
    assert md["weights"]["source"] == "run"
    assert onnx_session(out).get_inputs()[0].shape[1:] == [1, 32, 48, 32]


@pytest.mark.parametrize("command", ["export", "bench"])
def test_a_tag_whose_weights_cannot_be_had_fails_before_any_export(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDZOO_OFFLINE", "1")
    out = tmp_path / "q.onnx"
    argv = (
        ["export", "qtunet-t.ct-ssl", "-o", str(out)]
        if command == "export"
        else ["bench", "qtunet-t.ct-ssl", "--no-cuda", "-q", "--repeats", "1"]
    )
    assert main(argv) == 1  # the environment failed (offline, not cached): exit 1
    err = capsys.readouterr().err
    assert "qtunet-t" in err and "ct-ssl" in err and "offline" in err.lower()
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))


def test_bench_of_name_tag_times_those_weights(hub_env, capsys):
    import json

    from tests.servers import torch_bytes, url_path
    from tests.test_hub import git_blob_sha1
    from zoo._registry import get_spec, override_weights

    torch.manual_seed(3)
    enc = {k: v for k, v in zoo.create("qtunet-t").state_dict().items() if k.startswith("encoder.")}
    data = torch_bytes(enc)
    ws = get_spec("qtunet-t").weight("ct-ssl")
    hub_env.add_file(url_path(ws.url), data)
    with override_weights("qtunet-t", "ct-ssl", upstream_digest=f"gitsha1:{git_blob_sha1(data)}"):
        argv = ["bench", "qtunet-t.ct-ssl", "--img-size", "32", "--no-onnx", "--no-cuda", "--json", "-q"]
        assert main([*argv, "--repeats", "1", "--warmup", "0"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["weights_tag"] == "ct-ssl" and len(row["weights_sha256"]) == 64
    assert hub_env.hits(url_path(ws.url)) == 1
