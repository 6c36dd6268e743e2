"""The 2D Swin-UNETR encoder, its SimSiam pretraining module and the 2D SwinUNETR segmenter
(IoU-positives thesis, dittohed/exploring-ssl-for-ct) against the reference's golden records."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from tests import golden
from zoo._registry import get_spec, resolve
from zoo.convert import CheckpointFormatError
from zoo.convert.swinvit2d import convert

SIMSIAM = "swinvit2d-c48-simsiam-iou30-60"
BACKBONE = "swinvit2d-c48"
SEGMENTER = "swinunetr2d-c48"
G_SIMSIAM = "swinvit2d-c48-simsiam"
G_SEG = "swinunetr2d-c48-seg14"


def _build(name: str, **overrides) -> torch.nn.Module:
    spec = get_spec(name)
    return spec.builder(**{**spec.model_args, **overrides})


def _int_buffers(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items() if not v.is_floating_point()}


def _reference_sd(golden_id: str, model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = golden.reference_state_dict(golden_id, _int_buffers(model, prefix))
    golden.check_weights_rule(golden_id, sd)
    return sd


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def simsiam_reference() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Our SimSiam module and the golden reference-format state_dict for it."""
    model = _build(SIMSIAM)
    return model, _reference_sd(G_SIMSIAM, model)


# -- golden parity ----------------------------------------------------------------------------


def test_simsiam_config_matches_reference_constructor():
    cfg = golden.load(G_SIMSIAM)["config"]["backbone"]
    args = get_spec(SIMSIAM).model_args
    assert args["in_chans"] == cfg["in_chans"]
    assert args["embed_dim"] == cfg["embed_dim"]
    assert list(args["depths"]) == cfg["depths"]
    assert list(args["num_heads"]) == cfg["num_heads"]
    assert [args["window_size"]] * 2 == cfg["window_size"]
    assert [args["patch_size"]] * 2 == cfg["patch_size"]
    assert args["drop_path_rate"] == cfg["drop_path_rate"]


def test_swinvit2d_c48_simsiam_matches_reference_output(simsiam_reference):
    model, ref = simsiam_reference
    model.load_state_dict(convert(ref, get_spec(SIMSIAM)), strict=True)
    model.eval()
    x = golden.golden_input(G_SIMSIAM)
    with torch.no_grad():
        feature = model.backbone(x)
        z, p = model(x)
    golden.assert_matches_outputs(G_SIMSIAM, [feature, z, p])


def test_swinvit2d_c48_simsiam_param_counts_match_reference(simsiam_reference):
    model, _ = simsiam_reference
    g = golden.load(G_SIMSIAM)
    assert _trainable(model) == g["param_count"] == 18_376_698
    assert _trainable(model.backbone) == g["backbone_param_count"]
    assert _trainable(model.projection_head) == g["projection_head_param_count"]
    assert _trainable(model.prediction_head) == g["prediction_head_param_count"]
    assert get_spec(SIMSIAM).meta["num_params"] == g["param_count"]


def test_swinvit2d_c48_simsiam_state_dict_is_the_reference_manifest(simsiam_reference):
    model, _ = simsiam_reference
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == [[k, shape] for k, shape, _ in golden.load(G_SIMSIAM)["state_dict_manifest"]]


def test_swinvit2d_c48_backbone_matches_reference_feature(simsiam_reference):
    # The encoder-only model loads a SimSiam checkpoint (heads dropped) and computes its feature.
    _, ref = simsiam_reference
    model = _build(BACKBONE)
    model.load_state_dict(convert(ref, get_spec(BACKBONE)), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(golden.golden_input(G_SIMSIAM)).double().flatten()
    rec = golden.load(G_SIMSIAM)["outputs"][0]
    assert list(rec["shape"]) == [2, 768]
    atol = 1e-4 * max(abs(rec["stats"]["min"]), abs(rec["stats"]["max"]))
    values = torch.tensor(rec["sample"]["values"], dtype=torch.float64)
    sampled = out[torch.arange(0, out.numel(), rec["sample"]["stride"])]
    assert (sampled - values).abs().max().item() <= atol
    assert math.isclose(float(out.std()), rec["stats"]["std"], abs_tol=atol)
    assert _trainable(model) == golden.load(G_SIMSIAM)["backbone_param_count"] == 6_306_810


def test_swinunetr2d_c48_matches_reference_output():
    model = _build(SEGMENTER)
    g = golden.load(G_SEG)
    assert _trainable(model) == g["param_count"] == 25_138_568
    assert _trainable(model.swinViT) == g["swinViT_param_count"]
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == [[k, shape] for k, shape, _ in g["state_dict_manifest"]]

    ref = _reference_sd(G_SEG, model)
    model.load_state_dict(convert(ref, get_spec(SEGMENTER)), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(golden.golden_input(G_SEG))
    golden.assert_matches_outputs(G_SEG, out)


# -- key mapping --------------------------------------------------------------------------------


def test_simsiam_checkpoint_maps_onto_swinunetr_encoder(simsiam_reference):
    _, ref = simsiam_reference
    segmenter = _build(SEGMENTER)
    mapped = convert(ref, get_spec(SEGMENTER))
    encoder_keys = {k for k in segmenter.state_dict() if k.startswith(get_spec(SEGMENTER).encoder_prefixes)}
    assert set(mapped) == encoder_keys and len(mapped) == 126
    result = segmenter.load_state_dict(mapped, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == set(segmenter.state_dict()) - encoder_keys
    # The reference fine-tuning loads backbone.model.X strictly into SwinUNETR.swinViT.
    segmenter.swinViT.load_state_dict({k[len("swinViT.") :]: v for k, v in mapped.items()}, strict=True)
    for key, value in segmenter.swinViT.state_dict().items():
        assert torch.equal(value, ref[f"backbone.model.{key}"]), key


def test_simsiam_checkpoint_file_initialises_the_segmenter_encoder(simsiam_reference, tmp_path, caplog):
    import zoo

    _, ref = simsiam_reference
    path = tmp_path / "iou30-60.pt"
    torch.save(ref, path)  # main_simsiam.py's format: torch.save(simsiam.state_dict())
    with caplog.at_level(logging.INFO):
        segmenter = zoo.create(SEGMENTER, checkpoint_path=path)
    assert "encoder only" in caplog.text
    assert torch.equal(
        segmenter.swinViT.layers4[0].blocks[1].mlp.linear2.weight,
        ref["backbone.model.layers4.0.blocks.1.mlp.linear2.weight"],
    )
    # A 3-channel segmenter gets the patch embedding adapted from the 1-channel checkpoint.
    rgb = zoo.create(SEGMENTER, checkpoint_path=path, in_chans=3)
    assert rgb.swinViT.patch_embed.proj.weight.shape == (48, 3, 2, 2)
    simsiam = zoo.create(SIMSIAM, checkpoint_path=path)
    assert torch.equal(simsiam.prediction_head.layers[3].bias, ref["prediction_head.layers.3.bias"])


def test_dino_bare_checkpoint_maps_onto_every_encoder(simsiam_reference):
    _, ref = simsiam_reference
    bare = {k[len("backbone.model.") :]: v for k, v in ref.items() if k.startswith("backbone.model.")}
    for name, prefix in [(BACKBONE, "model."), (SEGMENTER, "swinViT."), (SIMSIAM, "backbone.model.")]:
        mapped = convert(bare, get_spec(name))
        assert mapped.keys() == {prefix + k for k in bare}, name


def test_finetuned_swinunetr_checkpoint_gives_the_encoder_to_the_backbone(caplog):
    segmenter = _build(SEGMENTER)
    sd = {f"module.{k}": v for k, v in segmenter.state_dict().items()}  # DataParallel-wrapped
    backbone = _build(BACKBONE)
    with caplog.at_level(logging.INFO, logger="zoo.convert.swinvit2d"):
        mapped = convert(sd, get_spec(BACKBONE))
    backbone.load_state_dict(mapped, strict=True)
    assert "dropping" in caplog.text and "decoder1" in caplog.text


def test_converter_rejects_unknown_and_3d_checkpoints():
    spec = get_spec(SEGMENTER)
    with pytest.raises(CheckpointFormatError, match="not a checkpoint of the swinvit2d family"):
        convert({"encoder.patch_embed.proj.weight": torch.zeros(48, 1, 2, 2)}, spec)
    with pytest.raises(CheckpointFormatError, match="2D"):
        convert({"backbone.model.patch_embed.proj.weight": torch.zeros(48, 1, 2, 2, 2)}, spec)
    with pytest.raises(CheckpointFormatError, match="use_v2"):
        convert({"swinViT.layers1c.0.conv.weight": torch.zeros(1)}, spec)
    with pytest.raises(CheckpointFormatError):
        convert({"state_dict": {"a": torch.zeros(1)}}, spec)


# -- registry ---------------------------------------------------------------------------------


def test_registry_entries_have_no_weights_and_say_why():
    for name in (BACKBONE, SIMSIAM, SEGMENTER):
        spec = get_spec(name)
        assert spec.weights == () and spec.default_tag is None
        assert "no checkpoints" in spec.no_weights_reason
        assert spec.input_size == (1, 96, 96)
    assert resolve("swinvit2d-c48-simsiam-iou30-60-flare22") == (get_spec(SIMSIAM), None)
    assert get_spec(SIMSIAM).meta["pretraining_recipe"]["iou_range"] == (0.3, 0.6)


@pytest.mark.parametrize("name", [BACKBONE, SIMSIAM, SEGMENTER])
def test_declared_keys_exist_in_the_model(name):
    spec = get_spec(name)
    sd = _build(name).state_dict()
    for conv in spec.first_convs:
        assert sd[f"{conv}.weight"].shape[1] == 1, conv
    for head in spec.head_keys:
        assert any(k.startswith(head) for k in sd), head
    # The encoder prefix covers exactly the 126 SwinTransformer entries (5.3 of the spec).
    assert len([k for k in sd if k.startswith(spec.encoder_prefixes)]) == 126


def test_segmenter_head_follows_num_classes():
    model = _build(SEGMENTER, num_classes=5)
    assert model.state_dict()["out.conv.conv.weight"].shape[0] == 5
    with pytest.raises(ValueError, match="no classification head"):
        _build(BACKBONE, num_classes=5)
    assert get_spec(SIMSIAM).head_keys == () and get_spec(SEGMENTER).head_keys == ("out.",)


# -- input validation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter() -> torch.nn.Module:
    return _build(SEGMENTER).eval()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 96, 96), r"expects a 4D input \(B, C, H, W\)"),
        ((1, 1, 96, 96, 96), r"expects a 4D input"),
        ((1, 3, 96, 96), r"expects 1 input channel\(s\), found 3"),
        ((1, 1, 96, 100), r"divisible by 32.*\(96, 100\)"),
    ],
)
def test_swinunetr2d_rejects_bad_inputs_before_compute(segmenter, shape, message):
    with pytest.raises(ValueError, match=message):
        segmenter(torch.zeros(shape))


def test_swinvit2d_rejects_bad_inputs_and_accepts_other_sizes():
    model = _build(BACKBONE).eval()
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\), found 2"):
        model(torch.zeros(1, 2, 96, 96))
    with pytest.raises(ValueError, match="4D input"):
        model(torch.zeros(96, 96))
    with torch.no_grad():  # MONAI's encoder pads sizes that are not multiples of 32
        assert model(torch.zeros(1, 1, 64, 80)).shape == (1, 768)


def test_segmenter_img_size_must_be_divisible_by_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        _build(SEGMENTER, img_size=(100, 96))


def test_monais_window_indices_are_derived_and_a_file_without_them_loads(tmp_path):
    from safetensors.torch import save_file

    import zoo
    from zoo.layers.derived import derived_buffer_keys, without_derived

    args = dict(img_size=(64, 64), feature_size=12, num_classes=3)
    torch.manual_seed(0)
    model = zoo.create(SEGMENTER, **args).eval()
    derived = derived_buffer_keys(model)
    # One per Swin block (2 per stage, 4 stages), all MONAI's indices, all integer.
    assert len(derived) == 8 and all(k.endswith("attn.relative_position_index") for k in derived)
    assert all(not model.state_dict()[k].is_floating_point() for k in derived)
    lean = without_derived(model.state_dict(), model)
    save_file({k: v.contiguous() for k, v in lean.items()}, str(tmp_path / "lean.safetensors"))
    loaded = zoo.create(SEGMENTER, checkpoint_path=tmp_path / "lean.safetensors", **args).eval()
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
