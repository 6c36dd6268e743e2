"""PCT-Net and FMUNet (MIS-FM): parity with the authors' code, checkpoint formats, input checks."""

from __future__ import annotations

import pytest
import torch

from tests import golden
from zoo._registry import get_spec, resolve
from zoo.convert import CheckpointFormatError, read_checkpoint
from zoo.convert.pctnet import convert
from zoo.models.pctnet import FMUNet, PCTNet, nnformer_relative_position_index

PCT_GOLDEN = "pctnet-demo"
FMU_GOLDEN = "fmunet-demo"


def _pct_args(cfg: dict) -> dict:
    """The reference PCTNet params dict, in our argument names."""
    return dict(
        in_chans=cfg["in_chns"],
        num_classes=cfg["class_num"],
        img_size=tuple(cfg["input_size"]),
        feature_chns=tuple(cfg["feature_chns"]),
        dropout=tuple(cfg["dropout"]),
        resolution_mode=cfg["resolution_mode"],
        depths=tuple(cfg["depths"]),
        num_heads=tuple(cfg["num_heads"]),
        window_sizes=tuple(cfg["window_sizes"]),
        deep_supervision=cfg["multiscale_pred"],
    )


def _fmu_args(cfg: dict) -> dict:
    """The reference FMUNet params dict, in our argument names."""
    return dict(
        in_chans=cfg["in_chns"],
        num_classes=cfg["class_num"],
        feature_chns=tuple(cfg["feature_chns"]),
        dropout=cfg["dropout"],
        depth=cfg["depth"],
        res_mode=cfg["res_mode"],
        deep_supervision=cfg["multiscale_pred"],
    )


def _golden_model(golden_id: str) -> torch.nn.Module:
    cfg = golden.load(golden_id)["config"]
    if golden_id == PCT_GOLDEN:
        return get_spec("pctnet").builder(**_pct_args(cfg))
    return get_spec("fmunet").builder(**_fmu_args(cfg))


def _reference_weights(golden_id: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The golden reference state_dict; integer buffers (index, BN counters) come from ``model``."""
    integer_buffers = {k: v for k, v in model.state_dict().items() if not v.is_floating_point()}
    return golden.reference_state_dict(golden_id, integer_buffers)


def _pymic_checkpoint(sd: dict[str, torch.Tensor]) -> dict:
    """A checkpoint as PyMIC's SegmentationAgent saves it (the released files' format)."""
    first = next(iter(sd.values()))
    return {
        "iteration": 400000,
        "valid_pred": 0.8123,
        "model_state_dict": sd,
        "optimizer_state_dict": {
            "state": {0: {"step": torch.tensor(400000.0), "exp_avg": torch.zeros_like(first)}},
            "param_groups": [{"lr": 1e-3, "weight_decay": 1e-5, "params": [0]}],
        },
    }


@pytest.fixture
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pctnet() -> PCTNet:
    spec = get_spec("pctnet")
    return spec.builder(**spec.model_args).eval()


@pytest.fixture(scope="module")
def fmunet() -> FMUNet:
    spec = get_spec("fmunet")
    return spec.builder(**spec.model_args).eval()


# ---------------------------------------------------------------- parity with the reference


def test_pctnet_matches_reference_output_at_all_four_scales():
    model = _golden_model(PCT_GOLDEN).eval()
    reference = _reference_weights(PCT_GOLDEN, model)
    golden.check_weights_rule(PCT_GOLDEN, reference)
    sd = convert(_pymic_checkpoint(reference), get_spec("pctnet"))
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        outputs = model(golden.golden_input(PCT_GOLDEN))
    assert isinstance(outputs, list) and len(outputs) == 4
    golden.assert_matches_outputs(PCT_GOLDEN, outputs)


def test_fmunet_matches_reference_output():
    model = _golden_model(FMU_GOLDEN).eval()
    reference = _reference_weights(FMU_GOLDEN, model)
    golden.check_weights_rule(FMU_GOLDEN, reference)
    model.load_state_dict(convert(reference, get_spec("fmunet")), strict=True)
    with torch.no_grad():
        output = model(golden.golden_input(FMU_GOLDEN))
    assert isinstance(output, torch.Tensor)
    golden.assert_matches_outputs(FMU_GOLDEN, output)


@pytest.mark.parametrize("golden_id", [PCT_GOLDEN, FMU_GOLDEN])
def test_param_count_equals_reference(golden_id):
    model = _golden_model(golden_id)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == golden.load(golden_id)["param_count"]


@pytest.mark.parametrize("golden_id", [PCT_GOLDEN, FMU_GOLDEN])
def test_state_dict_keys_shapes_and_order_equal_reference_manifest(golden_id):
    sd = _golden_model(golden_id).state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()]
    assert ours == golden.load(golden_id)["state_dict_manifest"]


def test_relative_position_index_is_nnformers_quirky_one():
    index = nnformer_relative_position_index(6)
    assert index.shape == (216, 216) and index.dtype == torch.int64
    # 17/11/1 multipliers: only 291 of the 1331 bias-table rows are addressed
    assert index.unique().tolist() == list(range(291))
    sums = golden.load(PCT_GOLDEN)["weights_check"]["integer_entry_sums"]
    key = "pyramid_ct.convtrans_e2.trans.blocks.0.attn.relative_position_index"
    assert int(index.sum()) == sums[key]


# ---------------------------------------------------------------- registry


def test_default_pctnet_is_the_released_pretraining_config():
    expected = _pct_args(golden.load(PCT_GOLDEN)["config"])
    del expected["deep_supervision"]
    expected["num_classes"] = 5  # the Volume Fusion head (K + 1 classes) of the released weights
    assert dict(get_spec("pctnet").model_args) == expected


@pytest.mark.parametrize(
    ("alias", "name", "tag", "filename"),
    [
        ("pctnet-vf110k", "pctnet", "vf110k", "pctnet_pretrain.pt"),
        ("pctnet-vf10k", "pctnet", "vf10k", "pctnet_ct10k_volf.pt"),
        ("fmunet-vf1k", "fmunet", "vf1k", "fmunet_abd1k_volf.pt"),
    ],
)
def test_aliases_resolve_to_their_weights_tag(alias, name, tag, filename):
    spec, resolved_tag = resolve(alias)
    assert (spec.name, resolved_tag) == (name, tag)
    weights = spec.weight(tag)
    assert filename in weights.upstream_format
    assert weights.num_classes == 5 and weights.covers == "full" and weights.in_chans == 1
    assert weights.hf_hub_id == f"medzoo/{alias}"
    assert weights.upstream_digest is None
    # One Drive link each: the 2023 file by id, the 2024/25 files by name in their shared folder.
    assert (weights.url or weights.notes).count("https://drive.google.com/") == 1


def test_vf110k_points_at_the_2023_drive_file():
    url = get_spec("pctnet").weight("vf110k").url
    assert url.endswith("id=1jQc-2hhsp3EyZj54_KEJte85diUtW8Fg")


@pytest.mark.parametrize(("name", "golden_id"), [("pctnet", PCT_GOLDEN), ("fmunet", FMU_GOLDEN)])
def test_head_keys_and_first_convs_are_exactly_the_entries_that_change_with_classes_and_channels(
    name, golden_id
):
    spec = get_spec(name)
    model = spec.builder(**{**spec.model_args, "in_chans": 3, "num_classes": 7})
    reference_shapes = {k: s for k, s, _ in golden.load(golden_id)["state_dict_manifest"]}
    changed = {k for k, v in model.state_dict().items() if list(v.shape) != reference_shapes[k]}
    heads = {k for k in changed if k.startswith(spec.head_keys)}
    first = {k for k in changed if k.removesuffix(".weight") in spec.first_convs}
    assert heads | first == changed
    assert {k for k in model.state_dict() if k.startswith(spec.head_keys)} == heads
    assert len(first) == len(spec.first_convs)


# ---------------------------------------------------------------- checkpoint formats


@pytest.mark.parametrize("golden_id", [PCT_GOLDEN, FMU_GOLDEN])
def test_released_pymic_checkpoint_file_loads_strictly(golden_id, tmp_path):
    model = _golden_model(golden_id)
    reference = _reference_weights(golden_id, model)
    path = tmp_path / "released.pt"
    torch.save(_pymic_checkpoint(reference), path)
    name = "pctnet" if golden_id == PCT_GOLDEN else "fmunet"
    sd = convert(read_checkpoint(path), get_spec(name))
    model.load_state_dict(sd, strict=True)
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)


def test_dataparallel_prefixed_checkpoint_converts_to_the_same_keys(fmunet):
    reference = _reference_weights(FMU_GOLDEN, fmunet)
    wrapped = {f"module.{k}": v for k, v in reference.items()}
    sd = convert({"model_state_dict": wrapped, "iteration": 1}, get_spec("fmunet"))
    assert list(sd) == list(reference)


def test_unknown_container_is_rejected(fmunet):
    reference = _reference_weights(FMU_GOLDEN, fmunet)
    with pytest.raises(CheckpointFormatError, match="flat mapping"):
        convert({"state_dict": reference}, get_spec("fmunet"))
    with pytest.raises(CheckpointFormatError, match="none of"):
        convert({f"model.{k}": v for k, v in reference.items()}, get_spec("fmunet"))


def test_fmunet_checkpoint_given_to_pctnet_is_named_as_such(fmunet):
    reference = _reference_weights(FMU_GOLDEN, fmunet)
    with pytest.raises(CheckpointFormatError, match="fmunet"):
        convert(reference, get_spec("pctnet"))


def test_checkpoint_with_a_different_relative_position_index_is_rejected(pctnet):
    reference = _reference_weights(PCT_GOLDEN, pctnet)
    key = "pyramid_ct.convtrans_e3.trans.blocks.1.attn.relative_position_index"
    axis = torch.arange(6)
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + 5
    reference[key] = rel[0] * 121 + rel[1] * 11 + rel[2]  # standard Swin index
    with pytest.raises(CheckpointFormatError, match="nnFormer"):
        convert(reference, get_spec("pctnet"))


# ---------------------------------------------------------------- input validation


def test_pctnet_rejects_other_spatial_sizes_and_points_to_sliding_window(pctnet):
    with pytest.raises(ValueError, match=r"exactly \(64, 128, 128\).*sliding-window"):
        pctnet(torch.zeros(1, 1, 64, 128, 96))


def test_pctnet_rejects_wrong_channel_count_and_ndim(pctnet):
    with pytest.raises(ValueError, match="1 input channel"):
        pctnet(torch.zeros(1, 2, 64, 128, 128))
    with pytest.raises(ValueError, match="5D"):
        pctnet(torch.zeros(1, 64, 128, 128))


def test_pctnet_img_size_must_fit_the_downsampling():
    with pytest.raises(ValueError, match=r"divisible by \(8, 16, 16\)"):
        PCTNet(img_size=(60, 128, 128))


def test_pctnet_accepts_input_size_as_an_alias_of_img_size():
    builder = get_spec("pctnet").builder
    small = dict(feature_chns=(4, 8, 16, 32, 64), num_heads=(1, 2, 4))
    assert builder(input_size=(16, 32, 32), **small).img_size == (16, 32, 32)
    with pytest.raises(ValueError, match="disagree"):
        builder(input_size=(16, 32, 32), img_size=(32, 32, 32), **small)


def test_fmunet_rejects_sizes_not_divisible_by_16(fmunet):
    with pytest.raises(ValueError, match=r"divisible by \(16, 16, 16\)"):
        fmunet(torch.zeros(1, 1, 40, 64, 64))
    with pytest.raises(ValueError, match="1 input channel"):
        fmunet(torch.zeros(1, 4, 32, 64, 64))


# ---------------------------------------------------------------- deep supervision


def test_pctnet_deep_supervision_returns_four_scales_finest_first(one_thread):
    torch.manual_seed(0)
    kw = dict(num_classes=3, img_size=(16, 32, 32), feature_chns=(4, 8, 16, 32, 64), num_heads=(1, 2, 4))
    model = PCTNet(**kw, deep_supervision=True).eval()
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        outputs = model(x)
        model.deep_supervision = False
        single = model(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [
        (2, 3, 16, 32, 32),
        (2, 3, 16, 16, 16),
        (2, 3, 8, 8, 8),
        (2, 3, 4, 4, 4),
    ]
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, outputs[0])


def test_fmunet_deep_supervision_returns_four_scales_finest_first(one_thread):
    torch.manual_seed(0)
    model = FMUNet(num_classes=3, feature_chns=(4, 8, 16, 32, 64), deep_supervision=True).eval()
    x = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        outputs = model(x)
        model.deep_supervision = False
        single = model(x)
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32, 48), (16, 16, 24), (8, 8, 12), (4, 4, 6)]
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, outputs[0])
