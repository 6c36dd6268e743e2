"""ULKANet / LoGoNet (Masked LoGoNet, KDD 2024): sizes, shapes, sub-cube handling, loading.

No golden file exists (the authors' code and weights are not available): the sizes are
checked against the paper's Table 10, the rest against the paper's description.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo._registry import get_spec
from zoo.convert import CheckpointFormatError
from zoo.convert.logonet import convert
from zoo.models.logonet import LoGoNet, ULKANet, ULKAStage, merge_subcubes, split_subcubes

# Table 10 of the paper: parameters and "FLOPs" (MACs, G) at one 1×96³ crop.
PAPER_TABLE_10 = {
    "ulkanet": (40.2e6, 109.94),
    "logonet": (67.5e6, 246.96),
    "ulkanet-l": (121.20e6, 218.70),
    "logonet-l": (172.54e6, 487.65),
}
NAMES = list(PAPER_TABLE_10)

# Small nets with the same layout, for the behaviour tests that run real compute.
TINY_ULKANET = dict(
    dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), decoder_dims=(16, 16, 8, 8, 8)
)
TINY_LOCAL = dict(
    local_dims=(8, 16), local_depths=(1, 1), local_mlp_ratios=(2, 2), local_decoder_dims=(8, 8, 8)
)


def _build(name: str, device: str = "cpu", **overrides) -> torch.nn.Module:
    spec = get_spec(name)
    with torch.device(device):
        return spec.builder(**{**spec.model_args, **overrides}).eval()


def _tiny_logonet(**overrides) -> LoGoNet:
    torch.manual_seed(0)
    args = dict(in_chans=1, num_classes=3, img_size=(32, 32, 32), **TINY_ULKANET, **TINY_LOCAL)
    return LoGoNet(**{**args, **overrides}).eval()


# --------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_paper_table_10_within_1_percent(name):
    model = _build(name, "meta")
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == pytest.approx(PAPER_TABLE_10[name][0], rel=0.01)


@pytest.mark.parametrize("name", NAMES)
def test_macs_at_96_cubed_match_paper_table_10_within_5_percent(name):
    # On the meta device nothing is computed; LoGoNet-L takes ~4 s here.
    model = _build(name, "meta")
    start = time.perf_counter()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 96, 96, 96, device="meta"))
    assert time.perf_counter() - start < 30
    gmacs = counter.get_total_flops() / 2 / 1e9
    assert gmacs == pytest.approx(PAPER_TABLE_10[name][1], rel=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_registry_records_the_paper_numbers_and_the_papers_inference_window(name):
    spec = get_spec(name)
    assert spec.meta["paper_params"] == pytest.approx(PAPER_TABLE_10[name][0])
    assert spec.meta["paper_gmacs"] == pytest.approx(PAPER_TABLE_10[name][1])
    assert spec.sliding_window == {"roi_size": (96, 96, 96), "overlap": 0.5}
    assert spec.input_size == (1, 96, 96, 96)
    assert spec.weights == () and spec.default_tag is None and spec.no_weights_reason


@pytest.mark.parametrize("name", NAMES)
def test_registered_head_first_conv_and_encoder_keys_exist_in_the_model(name):
    spec = get_spec(name)
    keys = list(_build(name, "meta").state_dict())
    assert [k for k in keys if k.startswith(spec.head_keys)] == ["classifier.weight", "classifier.bias"]
    for conv in spec.first_convs:
        assert f"{conv}.weight" in keys
    for prefix in spec.encoder_prefixes:
        assert any(k.startswith(prefix) for k in keys)


def test_logonet_first_convs_name_the_global_and_all_eight_local_input_convs():
    assert len(get_spec("logonet").first_convs) == 9
    assert len(get_spec("logonet-l").first_convs) == 9


def test_b_aliases_resolve_to_the_normal_size():
    assert get_spec("ulkanet-b").name == "ulkanet"
    assert get_spec("logonet-b").name == "logonet"


# --------------------------------------------------------------------------------- forward


def test_ulkanet_gives_per_voxel_logits_at_32_cubed():
    model = _build("ulkanet")
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32, 32))
    assert out.shape == (1, 14, 32, 32, 32)
    assert torch.isfinite(out).all()


def test_logonet_gives_per_voxel_logits_at_32_cubed():
    model = _build("logonet")
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32, 32))
    assert out.shape == (1, 14, 32, 32, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ulkanet-l", "logonet-l"])
@pytest.mark.parametrize("layer_scale", [1e-2, None])
def test_large_depth_at_reduced_width_stays_finite_only_with_layer_scale(name, layer_scale):
    # Default-run version of the full-size check below: the overflow comes from the depth (24 blocks
    # in stage 3), so the Large depths at small widths show it, in seconds instead of minutes.
    torch.manual_seed(0)
    narrow = dict(dims=(8, 16, 32, 64), decoder_dims=(16, 16, 16, 8, 8), layer_scale_init=layer_scale)
    if name == "logonet-l":
        narrow.update(local_dims=(8, 16), local_decoder_dims=(8, 8, 8))
    model = _build(name, **narrow)
    assert any(isinstance(m, ULKAStage) and len(m.blocks) == 24 for m in model.modules())  # full depth
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        out = model(x)
    if layer_scale is None:  # the check can fail: without the scale the activations overflow
        assert not torch.isfinite(out).all() or out.abs().max() >= 1e3
        return
    assert torch.isfinite(out).all() and out.abs().max() < 1e3
    model.train()
    model(x).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow  # full-size Large models: minutes on a shared 2-core machine
@pytest.mark.parametrize("name", ["ulkanet-l", "logonet-l"])
def test_large_sizes_stay_finite_at_initialisation_in_eval_and_train_mode(name):
    # The 24-block stage 3 of the Large size: without the residual layer scale its activations
    # doubled every block and overflowed to NaN (eval mode, BN on its initial statistics).
    torch.manual_seed(0)
    model = _build(name)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        out = model(x)
        feats = model.encoder[2](model.encoder[1](model.encoder[0](x))) if name == "ulkanet-l" else None
    assert torch.isfinite(out).all()
    assert out.abs().max() < 1e3
    if feats is not None:
        assert feats.abs().max() < 1e3
    model.train()
    out = model(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_layer_scale_is_on_both_residual_branches_and_can_be_removed():
    net = ULKANet(
        num_classes=2, img_size=32, dims=(8, 16), depths=(1, 1), mlp_ratios=(2, 2), decoder_dims=(8, 8, 8)
    )
    keys = set(net.state_dict())
    assert {"encoder.0.blocks.0.layer_scale_1", "encoder.0.blocks.0.layer_scale_2"} <= keys
    assert torch.equal(net.encoder[0].blocks[0].layer_scale_1, torch.full((8,), 1e-2))
    plain = ULKANet(
        num_classes=2,
        img_size=32,
        dims=(8, 16),
        depths=(1, 1),
        mlp_ratios=(2, 2),
        decoder_dims=(8, 8, 8),
        layer_scale_init=None,
    )
    assert not any("layer_scale" in k for k in plain.state_dict())
    assert sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * (
        8 + 16
    )


def test_logonet_takes_non_cubic_inputs_whose_sides_are_multiples_of_32():
    model = _tiny_logonet()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 64, 32))
    assert out.shape == (1, 3, 32, 64, 32)


@pytest.mark.parametrize("cls", [ULKANet, LoGoNet])
@pytest.mark.parametrize("shape", [(1, 1, 48, 48, 48), (1, 1, 32, 32, 40), (1, 1, 16, 16, 16)])
def test_sides_not_multiple_of_32_raise_value_error_naming_the_constraint(cls, shape):
    model = cls(**TINY_ULKANET, **(TINY_LOCAL if cls is LoGoNet else {})).eval()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.zeros(shape))


@pytest.mark.parametrize("cls", [ULKANet, LoGoNet])
def test_wrong_channel_count_raises_value_error(cls):
    model = cls(in_chans=1, **TINY_ULKANET, **(TINY_LOCAL if cls is LoGoNet else {})).eval()
    with pytest.raises(ValueError, match="1 input channel"):
        model(torch.zeros(1, 2, 32, 32, 32))


@pytest.mark.parametrize("cls", [ULKANet, LoGoNet])
def test_non_5d_input_raises_value_error(cls):
    model = cls(**TINY_ULKANET, **(TINY_LOCAL if cls is LoGoNet else {})).eval()
    with pytest.raises(ValueError, match="5D"):
        model(torch.zeros(1, 32, 32, 32))


@pytest.mark.parametrize("name", ["ulkanet", "logonet"])
def test_img_size_not_multiple_of_32_is_refused_at_construction(name):
    with pytest.raises(ValueError, match="divisible by 32"):
        _build(name, "meta", img_size=(80, 96, 96))


def test_in_chans_override_builds_a_net_for_that_many_channels():
    model = _tiny_logonet(in_chans=2)
    with torch.no_grad():
        assert model(torch.randn(1, 2, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


# --------------------------------------------------------------------------------- sub-cubes


def test_split_then_merge_of_a_volume_is_the_identity():
    x = torch.randn(2, 3, 8, 12, 16)
    parts = split_subcubes(x, 2)
    assert len(parts) == 8 and all(p.shape == (2, 3, 4, 6, 8) for p in parts)
    assert torch.equal(merge_subcubes(parts, 2), x)


def test_sub_cubes_are_in_raster_order_over_depth_height_width():
    x = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(1, 1, 4, 4, 4)
    parts = split_subcubes(x, 2)
    # block (i, j, k) = (1, 0, 1) is index (1·2 + 0)·2 + 1 = 5
    assert torch.equal(parts[5], x[:, :, 2:, :2, 2:])
    assert torch.equal(parts[0], x[:, :, :2, :2, :2])
    assert torch.equal(parts[7], x[:, :, 2:, 2:, 2:])


def test_each_local_net_writes_only_its_own_octant():
    model = _tiny_logonet()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = model.forward_features(x)
        for p in model.local_nets[5].parameters():
            p.add_(0.5)
        after = model.forward_features(x)
    changed = (after - before).abs().sum(dim=(0, 1)) > 0
    octant = torch.zeros(32, 32, 32, dtype=torch.bool)
    octant[16:, :16, 16:] = True  # block (1, 0, 1)
    assert changed[octant].all()
    assert not changed[~octant].any()


def test_each_local_net_sees_only_its_own_octant_of_the_input():
    model = _tiny_logonet()
    x = torch.randn(1, 1, 32, 32, 32)
    y = x.clone()
    y[:, :, :16, :16, :16] += 1.0  # octant 0 only
    with torch.no_grad():
        local_x = [
            net.forward_features(c) for net, c in zip(model.local_nets, split_subcubes(x, 2), strict=True)
        ]
        local_y = [
            net.forward_features(c) for net, c in zip(model.local_nets, split_subcubes(y, 2), strict=True)
        ]
    assert not torch.equal(local_x[0], local_y[0])
    for i in range(1, 8):
        assert torch.equal(local_x[i], local_y[i])


def test_logonet_has_eight_local_nets_with_separate_weights_and_two_stages_each():
    model = _build("logonet", "meta")
    assert len(model.local_nets) == 8
    assert all(len(net.encoder) == 2 for net in model.local_nets)
    assert len(model.global_net.encoder) == 4
    first = [net.encoder[0].patch_embed.proj.weight for net in model.local_nets]
    assert len({id(w) for w in first}) == 8


# --------------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def tiny_ulkanet_state():
    torch.manual_seed(0)
    return ULKANet(**TINY_ULKANET).state_dict()


@pytest.mark.parametrize(
    "layout",
    ["flat", "lightning", "lightning-with-extras", "ddp", "lightning-ddp", "model-container"],
)
def test_converter_unwraps_each_layout_of_a_users_checkpoint(layout, tiny_ulkanet_state):
    sd = tiny_ulkanet_state
    ckpt = {
        "flat": sd,
        "lightning": {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in sd.items()}},
        "lightning-with-extras": {
            "state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "loss.weight": torch.ones(14)}
        },
        "ddp": {f"module.{k}": v for k, v in sd.items()},
        "lightning-ddp": {"state_dict": {f"model.module.{k}": v for k, v in sd.items()}},
        "model-container": {"model": sd, "optimizer": {"state": {}}},
    }[layout]
    out = convert(ckpt, get_spec("ulkanet"))
    assert out.keys() == sd.keys()
    model = ULKANet(**TINY_ULKANET)
    model.load_state_dict(out, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_converter_refuses_a_checkpoint_of_another_model(tiny_ulkanet_state):
    with pytest.raises(CheckpointFormatError, match="encoder.0.patch_embed.proj.weight"):
        convert({"backbone.conv1.weight": torch.zeros(1)}, get_spec("ulkanet"))
    with pytest.raises(CheckpointFormatError):
        convert([1, 2, 3], get_spec("ulkanet"))


def test_converter_refuses_an_ulkanet_checkpoint_for_logonet(tiny_ulkanet_state):
    with pytest.raises(CheckpointFormatError, match="global_net"):
        convert(tiny_ulkanet_state, get_spec("logonet"))


def test_create_loads_a_users_lightning_checkpoint_strictly(tmp_path, tiny_ulkanet_state):
    path = tmp_path / "ulkanet.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_ulkanet_state.items()}}, path)
    model = zoo.create("ulkanet", checkpoint_path=path, **TINY_ULKANET)
    for k, v in tiny_ulkanet_state.items():
        assert torch.equal(model.state_dict()[k], v)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_true_says_no_weights_exist_and_offers_checkpoint_path(name):
    with pytest.raises(zoo.NoPretrainedWeightsError, match="checkpoint_path="):
        zoo.create(name, pretrained=True)
