"""Input-channel adaptation of pretrained first convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.adapt import adapt_input_conv


@pytest.mark.parametrize(("c_old", "c_new"), [(4, 1), (1, 4), (2, 3), (3, 1)])
def test_adapted_conv_keeps_the_response_to_a_constant_input(c_old, c_new):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, c_old, 4, 4, 4, generator=g)
    new = adapt_input_conv(w, c_new)
    assert new.shape == (8, c_new, 4, 4, 4)
    x_old = torch.full((1, c_old, 8, 8, 8), 0.7)
    x_new = torch.full((1, c_new, 8, 8, 8), 0.7)
    torch.testing.assert_close(
        F.conv3d(x_new, new, stride=4), F.conv3d(x_old, w, stride=4), rtol=1e-5, atol=1e-5
    )


def test_single_channel_adaptation_is_the_sum_of_the_kernels():
    w = torch.randn(16, 3, 7, 7)
    torch.testing.assert_close(adapt_input_conv(w, 1), w.sum(1, keepdim=True), rtol=1e-6, atol=1e-6)


def test_non_conv_weight_is_rejected():
    with pytest.raises(ValueError, match=r"expected a convolution weight"):
        adapt_input_conv(torch.zeros(4, 4), 1)


# ---------------------------------------------------------------------------------------
# parts, freezing, layer-wise LR decay, features, linear probe, LoRA (issue 7)

import copy  # noqa: E402
import re  # noqa: E402

import zoo  # noqa: E402
from zoo import adapt  # noqa: E402
from zoo._registry import iter_specs  # noqa: E402

_ALL = [s.name for s in iter_specs()]
# Small configurations of registered families, for the tests that run forwards.
_TINY_FMUNET = dict(num_classes=3, feature_chns=(4, 8, 16, 32, 64))
_TINY_ULKANET = dict(
    num_classes=3, img_size=32, dims=(4, 8, 16, 32), depths=(1, 1, 1, 1), decoder_dims=(8, 8, 8, 8, 8)
)


def _on_meta(name: str, **overrides) -> torch.nn.Module:
    spec = zoo.get_spec(name)
    with torch.device("meta"):
        return spec.builder(**{**spec.model_args, **overrides})


@pytest.mark.parametrize("name", _ALL)
def test_every_model_declares_its_parts_from_input_to_output(name):
    spec = zoo.get_spec(name)
    groups = list(spec.param_groups)
    n_enc = sum(g.startswith("encoder.") for g in groups)
    assert n_enc >= 1
    assert groups == ["stem", *(f"encoder.{i}" for i in range(n_enc)), "decoder", "head"]
    assert all(p.endswith(".") for prefixes in spec.param_groups.values() for p in prefixes)
    assert spec.feature_info, f"{name} declares no feature maps"
    for f in spec.feature_info:
        assert {"module", "num_chs", "reduction"} <= set(f)


@pytest.mark.parametrize("name", _ALL)
def test_parameter_groups_cover_every_trainable_parameter_exactly_once(name):
    spec = zoo.get_spec(name)
    model = _on_meta(name)
    for key, p in model.named_parameters():
        if p.requires_grad:
            hits = [g for g, pre in spec.param_groups.items() if any(key.startswith(x) for x in pre)]
            assert len(hits) == 1, f"{key} lies in {hits or 'no group'}"
    modules = dict(model.named_modules())
    assert [f["module"] for f in spec.feature_info if f["module"] not in modules] == []


@pytest.mark.parametrize("name", _ALL)
def test_every_family_adapts_input_channels_and_class_count(name):
    spec = zoo.get_spec(name)
    overrides = {"in_chans": 2}
    new_classes = "num_classes" in spec.model_args and bool(spec.head_keys)
    if new_classes:
        overrides["num_classes"] = 5
    sd = _on_meta(name, **overrides).state_dict()
    for conv in spec.first_convs:
        assert sd[f"{conv}.weight"].shape[1] == 2, conv
    if new_classes:
        head_weights = [
            k for k in sd if k.endswith(".weight") and any(k.startswith(h) for h in spec.head_keys)
        ]
        assert head_weights and all(sd[k].shape[0] == 5 for k in head_weights)


def test_frozen_encoder_gets_no_gradient_and_does_not_change():
    from zoo.train import OptimConfig, build_optimizer

    torch.manual_seed(0)
    model = zoo.create("fmunet", **_TINY_FMUNET).train()
    frozen = adapt.freeze(model, "encoder")
    assert frozen == ["stem", "encoder.0", "encoder.1", "encoder.2", "encoder.3"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, OptimConfig(lr=1e-2))
    model(torch.randn(2, 1, 32, 32, 32)).square().mean().backward()
    opt.step()
    parts = adapt.named_groups(model)
    encoder = [(k, p) for g in frozen for k, p in parts[g]]
    assert encoder and all(p.grad is None and torch.equal(p, before[k]) for k, p in encoder)
    assert any(not torch.equal(p, before[k]) for k, p in parts["decoder"])


def test_frozen_batchnorm_keeps_its_running_statistics():
    model = zoo.create("ulkanet", **_TINY_ULKANET).train()
    adapt.freeze(model, "encoder")
    enc_bn, dec_bn = "encoder.1.blocks.0.norm1", "decoder.1.convs.0.norm"
    before = {n: model.get_submodule(n).running_mean.clone() for n in (enc_bn, dec_bn)}
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32, 32) * 3 + 1)
    assert torch.equal(model.get_submodule(enc_bn).running_mean, before[enc_bn])
    assert not torch.equal(model.get_submodule(dec_bn).running_mean, before[dec_bn])
    adapt.unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


def test_layer_decay_gives_the_head_the_full_rate_and_each_earlier_stage_less():
    model = zoo.create("fmunet", **_TINY_FMUNET)
    adapt.freeze(model, "stem")
    groups = adapt.param_groups(model, lr=1e-3, layer_decay=0.5, weight_decay=0.05)
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["head"] == lr["decoder"] == pytest.approx(1e-3)
    assert lr["encoder.3"] == pytest.approx(1e-3 * 0.5)
    assert lr["encoder.0"] == pytest.approx(1e-3 * 0.5**4)
    assert not any(name.startswith("stem") for name in lr)  # frozen parameters are left out
    for g in groups:
        assert (g["weight_decay"] == 0) == g["name"].endswith(".no_decay")
        if g["weight_decay"] == 0:
            assert all(p.ndim <= 1 for p in g["params"])
    listed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable)


def test_features_only_returns_one_map_per_stage_without_running_the_decoder():
    model = zoo.create("fmunet", **_TINY_FMUNET).eval()
    model.decoder.register_forward_pre_hook(lambda *_: pytest.fail("the decoder ran"))
    feats = adapt.features_only(model)
    maps = feats(torch.randn(2, 1, 32, 32, 32))
    assert [tuple(m.shape) for m in maps] == [
        (2, c, *(32 // f["reduction"],) * 3)
        for c, f in zip((4, 8, 16, 32, 64), feats.feature_info, strict=True)
    ]
    assert [f["num_chs"] for f in feats.feature_info] == [4, 8, 16, 32, 64]


def test_features_only_turns_channels_last_transformer_maps_to_channels_first():
    model = zoo.create("qtunet-t", num_classes=3, img_size=32, embed_dim=12).eval()
    maps = adapt.features_only(model)(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(m.shape) for m in maps] == [
        (1, 12, 8, 8, 8),
        (1, 24, 4, 4, 4),
        (1, 48, 2, 2, 2),
        (1, 96, 1, 1, 1),
    ]
    # The wrapped model is still usable on its own afterwards.
    assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_linear_probe_trains_only_its_head():
    model = zoo.create("swinunetr2d-c48")
    probe = adapt.linear_probe(model, num_classes=4).train()
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert probe.head.in_features == 768 and not probe.backbone.training
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 1, 64, 64)
    torch.nn.functional.cross_entropy(probe(x), torch.tensor([1, 3])).backward()
    opt.step()
    assert probe(x).shape == (2, 4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _lora_case(name):
    if name == "swinunetr2d-c48":
        return zoo.create(name, num_classes=3), torch.randn(1, 1, 64, 64)
    return zoo.create("ulkanet", **_TINY_ULKANET), torch.randn(2, 1, 32, 32, 32)


@pytest.mark.parametrize("name", ["swinunetr2d-c48", "ulkanet"])
def test_lora_leaves_base_weights_unchanged_and_merges_into_the_adapted_model(name):
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model, x = _lora_case(name)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    targets = adapt.lora_targets(model)
    assert targets and all(re.search(r"(attn|mlp)", t) for t in targets)
    adapt.add_lora(model, r=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(
        "lora_" in n or adapt.group_of(zoo.get_spec(name), n) in ("decoder", "head") for n in trainable
    )
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters did learn something
    for key, value in model.state_dict().items():
        plain = key.replace(".base_layer", "")
        if ".base_layer." in key:
            assert torch.equal(value, original[plain]), f"base weight {plain} changed"
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        plain_sd = adapt.plain_state_dict(model)
        merged = adapt.merge_lora(model)
        assert sorted(merged.state_dict()) == sorted(original)
        torch.testing.assert_close(merged(x), adapted, rtol=1e-4, atol=1e-5)
        fresh, _ = _lora_case(name)
        fresh.load_state_dict(plain_sd, strict=True)
        torch.testing.assert_close(fresh.eval()(x), adapted, rtol=1e-4, atol=1e-5)


def test_create_features_only_returns_the_registered_stage_maps():
    import zoo
    from zoo._registry import get_spec

    model = zoo.create("fmunet", features_only=True, feature_chns=(4, 8, 16, 32, 64))
    feats = model(torch.randn(1, 1, 32, 32, 32))
    info = get_spec("fmunet").feature_info
    assert len(feats) == len(info)
    for f, i in zip(feats, info, strict=True):
        assert f.shape[-1] == 32 // i["reduction"]
