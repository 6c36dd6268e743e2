"""Joint 2D/3D SSL ResNet-50 + deformable attention (Nguyen et al., AAAI 2023): parity and formats.

Expected values come from tests/data/golden/resnet50-deformattn.json (the authors'
``ResNet_Trans`` with deformable-attention 0.0.18) and from the spec's stated facts.
"""

from __future__ import annotations

import pytest
import torch

import zoo
from tests import golden
from zoo._registry import get_spec, resolve
from zoo.convert import CheckpointFormatError
from zoo.convert.deformattn import convert
from zoo.models.deformattn import ResNet50DeformAttn, sample_along_sequence

GID = "resnet50-deformattn"


def _build(name: str, **overrides) -> ResNet50DeformAttn:
    spec = get_spec(name)
    return spec.builder(**{**spec.model_args, **overrides})


def _integer_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not v.is_floating_point()}


def _upstream(key: str, shape) -> torch.Tensor:
    """A float entry filled by the golden rule under its *upstream* key name."""
    return golden.deterministic_value(key, list(shape))


def _assert_matches_record(rec: dict, out: torch.Tensor, rtol: float = 1e-4) -> None:
    """Statistics and strided sample of ``out`` against one golden record (rtol of its scale)."""
    assert list(out.shape) == rec["shape"], rec["name"]
    flat = out.detach().double().flatten()
    st = rec["stats"]
    atol = rtol * max(abs(st["min"]), abs(st["max"]))
    assert abs(float(flat.mean()) - st["mean"]) <= atol, rec["name"]
    assert abs(float(flat.std()) - st["std"]) <= atol, rec["name"]
    assert abs(float(flat.min()) - st["min"]) <= atol, rec["name"]
    assert abs(float(flat.max()) - st["max"]) <= atol, rec["name"]
    idx = torch.arange(0, flat.numel(), rec["sample"]["stride"])
    want = torch.tensor(rec["sample"]["values"], dtype=torch.float64)
    assert idx.numel() == want.numel()
    err = (flat[idx] - want).abs().max().item()
    assert err <= atol, f"{rec['name']}: max sample deviation {err:.3g} > {atol:.3g}"


def _upstream_3d_checkpoint(with_swav_head: bool) -> dict:
    """``swav3D.pth`` layout: ``{epoch, state_dict, optimizer}``, DDP ``module.`` keys."""
    model = _build("resnet50-deformattn")
    ref = golden.reference_state_dict(GID, _integer_buffers(model))
    if with_swav_head:
        for key, shape, _ in golden.load(GID)["ssl_head_manifest"]["manifest"]:
            ref[key] = _upstream(key, shape)
    return {
        "epoch": 100,
        "state_dict": {"module." + k: v for k, v in ref.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0}]},
    }


@pytest.fixture(scope="module")
def reference_run():
    """The default model with the golden weights (converted from our naming) and its outputs."""
    model = _build("resnet50-deformattn").eval()
    ref = golden.reference_state_dict(GID, _integer_buffers(model))
    golden.check_weights_rule(GID, ref)
    model.load_state_dict(convert(ref, get_spec("resnet50-deformattn")), strict=True)
    seen = {}
    hooks = [
        model.intra.register_forward_hook(lambda m, i, o: seen.__setitem__("intra", o)),
        model.inter.register_forward_hook(lambda m, i, o: seen.__setitem__("inter", o)),
    ]
    with torch.no_grad():
        out = model(golden.golden_input(GID))
    for h in hooks:
        h.remove()
    return model, out, seen


# --- parity -----------------------------------------------------------------------------------


def test_resnet50_deformattn_matches_reference_output(reference_run):
    _, out, _ = reference_run
    golden.assert_matches_outputs(GID, out)


def test_resnet50_deformattn_matches_reference_intermediates(reference_run):
    _, _, seen = reference_run
    records = golden.load(GID)["intermediates"]
    assert [r["name"] for r in records] == ["intra", "inter"]
    for rec in records:
        _assert_matches_record(rec, seen[rec["name"]])


def test_volume_embedding_is_unit_norm(reference_run):
    _, out, _ = reference_run
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1))


def test_swav_3d_checkpoint_converts_loads_strictly_and_matches_reference_logits():
    model = _build("resnet50-deformattn-swav").eval()
    sd = convert(_upstream_3d_checkpoint(with_swav_head=True), get_spec("resnet50-deformattn-swav"))
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        z, logits = model(golden.golden_input(GID))
    golden.assert_matches_outputs(GID, z)
    assert len(logits) == 1
    _assert_matches_record(golden.load(GID)["ssl_head_manifest"]["logits_with_rule_weights"], logits[0])


# --- sizes and key manifests ------------------------------------------------------------------


def test_resnet50_deformattn_param_count_matches_reference(reference_run):
    model, _, _ = reference_run
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == golden.load(GID)["param_count"] == 31_162_884


def test_state_dict_keys_and_shapes_match_reference_manifest(reference_run):
    model, _, _ = reference_run
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == golden.load(GID)["state_dict_manifest"]


def test_swav_variant_adds_exactly_the_reference_prototype_head():
    head = golden.load(GID)["ssl_head_manifest"]
    base = {k: list(v.shape) for k, v in _build("resnet50-deformattn").state_dict().items()}
    swav = _build("resnet50-deformattn-swav")
    extra = {k: list(v.shape) for k, v in swav.state_dict().items() if k not in base}
    assert extra == {k: shape for k, shape, _ in head["manifest"]}
    n = sum(p.numel() for p in swav.parameters())
    assert n == golden.load(GID)["param_count"] + head["param_count"]


def test_deepcluster_variant_has_three_heads_of_four_prototypes():
    model = _build("resnet50-deformattn-deepcluster")
    heads = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith("prototypes.")}
    assert heads == {f"prototypes.prototypes{i}.weight": [4, 640] for i in range(3)}  # spec §2.5


@pytest.mark.parametrize(
    "name", ["resnet50-deformattn", "resnet50-deformattn-swav", "resnet50-deformattn-deepcluster"]
)
def test_registry_meta_matches_the_built_model(name):
    spec = get_spec(name)
    model = _build(name)
    assert spec.meta["num_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert spec.weights == () and spec.default_tag is None
    assert "never published" in spec.no_weights_reason
    keys = model.state_dict().keys()
    assert f"{spec.first_conv}.weight" in keys
    assert all(any(k.startswith(p) for k in keys) for p in spec.encoder_prefixes)
    assert spec.meta["paper_params"] == 31_160_000  # Table 8: 31.16 M


def test_deepclusterv2_alias_resolves_to_the_deepcluster_variant():
    spec, tag = resolve("resnet50-deformattn-deepclusterv2")
    assert spec.name == "resnet50-deformattn-deepcluster" and tag is None


# --- checkpoint formats -----------------------------------------------------------------------


def test_swav_3d_checkpoint_loads_into_the_base_model_without_its_head():
    spec = get_spec("resnet50-deformattn")
    model = _build(spec.name)
    sd = convert(_upstream_3d_checkpoint(with_swav_head=True), spec)
    assert not any(k.startswith("prototypes.") for k in sd)
    model.load_state_dict(sd, strict=True)


def test_mask_stage_checkpoint_converts_to_the_inter_slice_transformer():
    model = _build("resnet50-deformattn")
    inter_keys = [(k, s) for k, s, _ in golden.load(GID)["state_dict_manifest"] if k.startswith("inter.")]
    upstream = {"module.mask_token": _upstream("module.mask_token", [640])}
    for key, shape in inter_keys:
        up = "module.encoder." + key.removeprefix("inter.")
        upstream[up] = _upstream(up, shape)
    upstream["module.decoder.weight"] = _upstream("module.decoder.weight", [640, 640])
    upstream["module.decoder.bias"] = _upstream("module.decoder.bias", [640])
    ckpt = {"epoch": 99, "state_dict": upstream, "optimizer": {"state": {}, "param_groups": []}}

    sd = convert(ckpt, get_spec("resnet50-deformattn"))
    assert sorted(sd) == sorted(k for k, _ in inter_keys)
    layer0 = "inter.encoder.layers.0.attention.to_q.weight"
    torch.testing.assert_close(sd[layer0], upstream["module.encoder.encoder.layers.0.attention.to_q.weight"])
    model.inter.load_state_dict({k.removeprefix("inter."): v for k, v in sd.items()}, strict=True)


def test_mask_stage_checkpoint_loads_through_create_as_the_transformer_only(tmp_path, caplog):
    inter_keys = [(k, s) for k, s, _ in golden.load(GID)["state_dict_manifest"] if k.startswith("inter.")]
    upstream = {"module.mask_token": _upstream("module.mask_token", [640])}
    for key, shape in inter_keys:
        up = "module.encoder." + key.removeprefix("inter.")
        upstream[up] = _upstream(up, shape)
    path = tmp_path / "mask_stage.pth"
    torch.save({"epoch": 99, "state_dict": upstream, "optimizer": {"state": {}, "param_groups": []}}, path)
    with caplog.at_level("INFO", logger="zoo"):
        model = zoo.create("resnet50-deformattn", checkpoint_path=path)
    assert "holds the inter only" in caplog.text and "intra.conv1.weight" in caplog.text
    key = "inter.encoder.layers.0.attention.to_q.weight"
    upstream_key = "module.encoder.encoder.layers.0.attention.to_q.weight"
    torch.testing.assert_close(model.state_dict()[key], upstream[upstream_key])


@pytest.mark.parametrize("with_fc", [False, True])
def test_2d_torchvision_checkpoint_covers_exactly_the_encoder_prefixes(with_fc):
    spec = get_spec("resnet50-deformattn")
    model = _build(spec.name)
    upstream = {}
    for key, shape, dtype in golden.load(GID)["state_dict_manifest"]:
        if key.startswith("intra.") and not key.startswith("intra.deconv."):
            up = key.removeprefix("intra.")
            upstream[up] = torch.zeros((), dtype=torch.int64) if dtype == "int64" else _upstream(up, shape)
    if with_fc:
        upstream["fc.weight"] = _upstream("fc.weight", [1000, 2048])
        upstream["fc.bias"] = _upstream("fc.bias", [1000])

    sd = convert(upstream, spec)
    encoder_keys = {k for k in model.state_dict() if k.startswith(spec.encoder_prefixes)}
    assert set(sd) == encoder_keys
    torch.testing.assert_close(sd["intra.layer3.5.conv2.weight"], upstream["layer3.5.conv2.weight"])
    result = model.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith(("intra.deconv.", "inter.")) for k in result.missing_keys)


def test_unknown_checkpoint_layouts_are_refused():
    spec = get_spec("resnet50-deformattn")
    with pytest.raises(CheckpointFormatError, match="not a known checkpoint layout"):
        convert({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, spec)
    with pytest.raises(CheckpointFormatError, match="without a 'state_dict'"):
        convert({"epoch": 1, "model": {}, "optimizer": {}}, spec)


# --- input validation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    return _build("resnet50-deformattn").eval()


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 32, 3, 128, 128), "64 slices are required by these weights"),
        ((1, 64, 1, 128, 128), "expected 3 channels per slice"),
        ((64, 3, 128, 128), "expected a 5-D volume"),
        ((1, 64, 3, 16, 16), "at least 32x32"),
    ],
)
def test_invalid_inputs_raise_value_error(small_model, shape, match):
    with pytest.raises(ValueError, match=match):
        small_model(torch.zeros(shape))


# --- sampling quirk ---------------------------------------------------------------------------


def test_default_sampling_reproduces_the_centre_feature_quirk():
    feats = torch.randn(3, 8, 640)
    pos = torch.rand(3, 160) * 2 - 1
    got = sample_along_sequence(feats, pos, corrected=False)
    centre = 0.5 * (feats[..., 319] + feats[..., 320])  # spec §1.3: mean of positions 319/320
    want = centre[..., None] * (1 - pos.abs() / 2)[:, None, :]
    torch.testing.assert_close(got, want)


def test_corrected_sampling_reads_along_the_sequence():
    feats = torch.randn(2, 8, 640, dtype=torch.float64)
    idx = torch.tensor([[0, 5, 319, 639], [1, 2, 3, 600]])
    pos = (2 * idx.double() + 1) / 640 - 1  # pixel centres under align_corners=False
    got = sample_along_sequence(feats, pos, corrected=True)
    want = torch.stack([feats[b][:, idx[b]] for b in range(2)])
    torch.testing.assert_close(got, want)


def test_both_sampling_paths_run_and_differ():
    torch.manual_seed(0)
    default = _build("resnet50-deformattn").eval()
    corrected = _build("resnet50-deformattn", corrected_sampling=True).eval()
    corrected.load_state_dict(default.state_dict(), strict=True)
    x = torch.randn(1, 64, 3, 32, 32)
    with torch.no_grad():
        a, b = default(x), corrected(x)
    assert a.shape == b.shape == (1, 640)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.allclose(a, b)


# --- 2D use -----------------------------------------------------------------------------------


def test_encoder_2d_single_channel_conv1_is_the_sum_of_rgb_weights(reference_run):
    model, _, _ = reference_run
    enc = model.encoder_2d(in_chans=1)
    rgb = model.intra.conv1.weight
    torch.testing.assert_close(enc.conv1.weight, rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(enc.layer4[2].conv3.weight, model.intra.layer4[2].conv3.weight)
    with torch.no_grad():
        assert enc.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 2048)
    with pytest.raises(ValueError, match="in_chans 1 or 3"):
        model.encoder_2d(in_chans=2)


def test_features_only_returns_resnet_stage_maps_per_slice():
    model = _build("resnet50-deformattn", features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 5, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [
        (1, 5, 256, 16, 16),
        (1, 5, 512, 8, 8),
        (1, 5, 1024, 4, 4),
        (1, 5, 2048, 2, 2),
    ]


# --- through zoo.create -----------------------------------------------------------------------


def test_create_loads_a_3d_checkpoint_file_strictly_with_a_single_channel_conv1(tmp_path):

    path = tmp_path / "swav3D.pth"
    ckpt = _upstream_3d_checkpoint(with_swav_head=True)
    torch.save(ckpt, path)
    model = zoo.create("resnet50-deformattn-swav", checkpoint_path=path, in_chans=1)
    rgb = ckpt["state_dict"]["module.intra.conv1.weight"]
    torch.testing.assert_close(model.intra.conv1.weight, rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        model.prototypes.prototypes0.weight, _upstream("prototypes.prototypes0.weight", [3000, 640])
    )


def test_create_accepts_a_2d_resnet_checkpoint_as_encoder_only(tmp_path, caplog):

    upstream = {}
    for key, shape, dtype in golden.load(GID)["state_dict_manifest"]:
        if key.startswith("intra.") and not key.startswith("intra.deconv."):
            up = key.removeprefix("intra.")
            upstream[up] = torch.zeros((), dtype=torch.int64) if dtype == "int64" else _upstream(up, shape)
    path = tmp_path / "resnet_swav2D.pth"
    torch.save(upstream, path)
    with caplog.at_level("INFO", logger="zoo"):
        model = zoo.create("resnet50-deformattn", checkpoint_path=path)
    torch.testing.assert_close(model.intra.layer1[0].conv1.weight, upstream["layer1.0.conv1.weight"])
    assert "encoder only" in caplog.text
    assert "inter.encoder.layers.0.norm1.weight" in caplog.text  # reported as newly initialised
