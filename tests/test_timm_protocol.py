"""timm's model protocol on every family (issue 27): driven by timm's own optimiser factory.

Small configurations (tests/small_configs.py); registered names whose small builds are the same
network (qtunet-t/-s/-b at the small width, …) run the forward-pass tests once.
"""

from __future__ import annotations

import pytest
import torch
from timm.optim import create_optimizer_v2

from tests.small_configs import small_config
from zoo import adapt
from zoo._registry import get_spec, iter_specs
from zoo.layers.model_api import FeatureInfo

_ALL = [s.name for s in iter_specs()]
# Segmenters: a class-count output head and a decoder.
_SEGMENTERS = [s.name for s in iter_specs() if s.head_keys and "num_classes" in s.model_args]
_ENCODERS = [n for n in _ALL if n not in _SEGMENTERS]


def _distinct(names: list[str]) -> list[str]:
    # One name per distinct small build (the sizes of a family differ only in width, which SMALL sets).
    seen, out = set(), []
    for n in names:
        spec = get_spec(n)
        key = (spec.builder, repr(sorted({**spec.model_args, **small_config(n)[0]}.items())))
        if key not in seen:
            seen.add(key)
            out.append(n)
    return out


# One per network class and decoder kind: QT, VT, ULKANet, LoGoNet, PCT-Net, FMUNet, Swin-UNETR 2D,
# the ResNet-50 DeformAttn encoder and the SimSiam encoder.
_FAMILIES = [
    "qtunet-t",
    "vtunet-t",
    "ulkanet",
    "logonet",
    "pctnet",
    "fmunet",
    "swinunetr2d-c48",
    "resnet50-deformattn",
    "swinvit2d-c48-simsiam-iou30-60",
]


def _small(name: str, **overrides) -> tuple[torch.nn.Module, tuple[int, ...]]:
    spec = get_spec(name)
    args, shape = small_config(name)
    torch.manual_seed(0)
    return spec.builder(**{**spec.model_args, **args, **overrides}), shape


def _registered_on_meta(name: str) -> torch.nn.Module:
    spec = get_spec(name)
    with torch.device("meta"):
        return spec.builder(**spec.model_args)


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _tensors(o)]


# ---------------------------------------------------------------------------------------
# the instance's data agrees with the registry


@pytest.mark.parametrize("name", _ALL)
def test_the_model_reports_the_registry_parts_head_and_feature_maps(name):
    spec = get_spec(name)
    model = _registered_on_meta(name)
    assert dict(model._api_parts()) == {k: tuple(v) for k, v in spec.param_groups.items()}
    # resnet50-deformattn registers head. for fine-tuned checkpoints; the bare encoder has none.
    assert set(model._api_head_keys()) <= set(spec.head_keys)
    if name in _SEGMENTERS:
        assert model._api_head_keys() == tuple(spec.head_keys)
    assert isinstance(model.feature_info, FeatureInfo)
    assert list(model.feature_info) == [dict(f) for f in spec.feature_info]


@pytest.mark.parametrize("name", _ALL)
def test_no_weight_decay_names_parameters_of_the_state_dict(name):
    model = _registered_on_meta(name)
    names = model.no_weight_decay()
    keys = set(model.state_dict())
    assert names and names <= keys
    assert {n for n in names if "relative_position_bias_table" in n} == {
        k for k, _ in model.named_parameters() if "relative_position_bias_table" in k
    }


# ---------------------------------------------------------------------------------------
# timm's optimiser factory builds zoo.adapt's layer-decay groups


def _per_parameter(model, groups) -> dict[int, tuple[float, float]]:
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter in two groups"
            out[id(p)] = (g.get("lr_scale", 1.0), g["weight_decay"])
    return out


def _timm_and_zoo(name: str, decay: float = 0.75):
    model, _ = _small(name)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=decay)
    ours = adapt.param_groups(model, lr=1e-3, layer_decay=decay, weight_decay=0.05, spec=get_spec(name))
    return model, _per_parameter(model, opt.param_groups), _per_parameter(model, ours)


@pytest.mark.parametrize("name", _SEGMENTERS)
def test_timm_layer_decay_groups_are_zoo_adapt_param_groups(name):
    model, timm_groups, zoo_groups = _timm_and_zoo(name)
    assert set(timm_groups) == {id(p) for p in model.parameters()}
    for key, p in model.named_parameters():
        (t_scale, t_wd), (z_scale, z_wd) = timm_groups[id(p)], zoo_groups[id(p)]
        assert t_scale == pytest.approx(z_scale, rel=1e-12), key
        assert t_wd == z_wd, key
    # The head takes the full rate, the stem the smallest: 0.75 ** (encoder stages + 1).
    n_enc = sum(g.startswith("encoder.") for g in get_spec(name).param_groups)
    assert sorted({s for s, _ in timm_groups.values()}) == pytest.approx(
        sorted(0.75**k for k in range(n_enc + 2))
    )


@pytest.mark.parametrize("name", ["swinvit2d-c48", "resnet50-deformattn"])
def test_timm_layer_decay_of_an_encoder_alone_is_shifted_by_one_layer(name):
    # Without decoder or head parameters, timm's deepest layer is the last encoder stage (scale 1);
    # zoo.adapt keeps the decoder's rank, so the last stage gets layer_decay: timm = ours / decay.
    model, timm_groups, zoo_groups = _timm_and_zoo(name)
    for key, p in model.named_parameters():
        assert timm_groups[id(p)][0] == pytest.approx(zoo_groups[id(p)][0] / 0.75, rel=1e-12), key
        assert timm_groups[id(p)][1] == zoo_groups[id(p)][1], key


# ---------------------------------------------------------------------------------------
# classifier


@pytest.mark.parametrize("name", _distinct(_SEGMENTERS))
def test_reset_classifier_changes_the_class_count_and_only_the_head(name):
    spec = get_spec(name)
    model, shape = _small(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = model.num_classes + 2
    model.reset_classifier(n)
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        if k.startswith(spec.head_keys):
            assert after[k].shape[0] == n, k
        else:
            assert torch.equal(after[k], v), f"{k} changed"
    assert any(model.get_classifier() is m for _, m in model._head_layers())
    with torch.no_grad():
        outs = _tensors(model.eval()(torch.randn(1, *shape[1:])))
    assert outs and all(o.shape[1] == n for o in outs)


def test_encoders_without_a_classifier_refuse_reset_classifier():
    model, _ = _small("swinvit2d-c48-simsiam-iou30-60")
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    with pytest.raises(ValueError, match="no classifier"):
        model.reset_classifier(3)


def test_deformattn_reset_classifier_puts_a_linear_head_on_the_embedding():
    model, shape = _small("resnet50-deformattn-swav")
    keep = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("prototypes.")}
    model.reset_classifier(4)
    assert model.prototypes is None and model.get_classifier() is model.head
    sd = model.state_dict()
    assert set(sd) == set(keep) | {"head.weight", "head.bias"}
    assert all(torch.equal(sd[k], v) for k, v in keep.items())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, *shape[1:])).shape == (1, 4)


# ---------------------------------------------------------------------------------------
# forward_features / forward_head


@pytest.mark.parametrize("name", _FAMILIES)
def test_forward_is_forward_head_of_forward_features(name):
    model, shape = _small(name)
    x = torch.randn(1, *shape[1:])
    with torch.no_grad():
        model.eval()
        want = _tensors(model(x))
        feats = model.forward_features(x)
        got = _tensors(model.forward_head(feats))
        pre = _tensors(model.forward_head(feats, pre_logits=True))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert pre


def test_qtunet_pre_logits_map_is_the_classifier_input():
    model, shape = _small("qtunet-t")
    x = torch.randn(1, *shape[1:])
    with torch.no_grad():
        model.eval()
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape[1:] == (model.embed_dim, *shape[2:])
        torch.testing.assert_close(model.get_classifier()(pre), model(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# gradient checkpointing


def _train_step(model, x, checkpointing: bool):
    model.set_grad_checkpointing(checkpointing)
    model.zero_grad(set_to_none=True)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(1)  # dropout and drop-path draw the same masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = _tensors(model(x))
    sum(o.float().square().mean() for o in outs).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads, saved[0]


@pytest.mark.parametrize("name", _FAMILIES)
def test_grad_checkpointing_keeps_outputs_gradients_and_running_stats(name):
    model, shape = _small(name)
    model.train()
    x = torch.randn(*shape)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    outs, grads, saved = _train_step(model, x, checkpointing=False)
    plain_buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.load_state_dict(start)
    outs_c, grads_c, saved_c = _train_step(model, x, checkpointing=True)
    assert model.grad_checkpointing
    for a, b in zip(outs_c, outs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert grads_c.keys() == grads.keys() and grads
    for k in grads:
        torch.testing.assert_close(grads_c[k], grads[k], rtol=0, atol=1e-5, msg=k)
    # BatchNorm statistics move once per step, not once more in the recomputation.
    for k, v in model.named_buffers():
        assert torch.equal(v, plain_buffers[k]), k
    assert saved_c < saved, "checkpointing kept as many activations"
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def test_adapt_set_grad_checkpointing_reaches_a_wrapped_model():
    model, _ = _small("fmunet")
    feats = adapt.features_only(model, spec=get_spec("fmunet"))
    assert adapt.set_grad_checkpointing(feats) is feats
    assert model.grad_checkpointing and model.encoder.en_conv0.grad_checkpointing
    with pytest.raises(TypeError, match="not a zoo model"):
        adapt.set_grad_checkpointing(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------
# feature_info


@pytest.mark.parametrize("name", _FAMILIES)
def test_feature_info_describes_the_features_only_maps(name):
    model, shape = _small(name)
    info = model.feature_info
    feats = adapt.features_only(model.eval(), spec=get_spec(name))
    assert isinstance(feats.feature_info, FeatureInfo)
    with torch.no_grad():
        maps = feats(torch.randn(1, *shape[1:]))
    per_slice = [bool(f.get("per_slice")) for f in info]
    space = shape[3:] if any(per_slice) else shape[2:]
    assert len(maps) == len(info)
    assert info.channels() == [m.shape[2 if s else 1] for m, s in zip(maps, per_slice, strict=True)]
    assert feats.feature_info.channels() == info.channels()
    for m, r in zip(maps, info.reduction(), strict=True):
        r = (r,) * len(space) if isinstance(r, int) else tuple(r)
        assert tuple(m.shape[-len(space) :]) == tuple(n // k for n, k in zip(space, r, strict=True))
    assert info.module_name() == [f["module"] for f in get_spec(name).feature_info]


def test_feature_info_selects_like_timm():
    info = FeatureInfo([dict(module=f"s{i}", num_chs=8 * 2**i, reduction=2**i) for i in range(4)])
    assert info.channels() == [8, 16, 32, 64] and info.reduction(2) == 4
    last = info.from_other((-2, -1))
    assert last.channels() == [32, 64] and len(last) == 2 and last[0]["module"] == "s2"
    assert last.get_dicts(keys=["module"]) == [{"module": "s2"}, {"module": "s3"}]
    assert "index" not in last[0]  # the zoo's hooks read index as a tuple position
