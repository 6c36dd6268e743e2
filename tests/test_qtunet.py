"""QT-UNet family (QT-UNet, QT-UNet-A, VT-UNet, VT-UNet-A): parity, checkpoints, inputs.

The parity tests build our model at a golden file's configuration, fill it with the
golden weights written in the *authors'* key naming, pass them through our converter,
load strictly and compare the output with what the authors' code computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from tests import golden
from zoo._registry import get_spec
from zoo.convert import CheckpointFormatError, read_checkpoint
from zoo.convert.qtunet import convert
from zoo.layers.window_attention_3d import (
    from_windows,
    get_window_size,
    shifted_window_mask,
    to_windows,
    window_partition,
    window_reverse,
)
from zoo.models.qtunet import QTUNet

UPSTREAM = json.loads((Path(__file__).parent / "data" / "qtunet-upstream-weights.json").read_text())

# golden id → our registry name (the goldens use the BraTS or BTCV configuration).
GOLDEN_NAMES = {
    "qtunet-t-brats": "qtunet-t",
    "qtunet-s-brats": "qtunet-s",
    "qtunet-b-brats": "qtunet-b",
    "qtunet-t-btcv": "qtunet-t",
    "qtunet-a-t-brats": "qtunet-a-t",
    "qtunet-a-s-brats": "qtunet-a-s",
    "qtunet-a-b-brats": "qtunet-a-b",
    "vtunet-t-brats": "vtunet-t",
    "vtunet-s-brats": "vtunet-s",
    "vtunet-b-brats": "vtunet-b",
    "vtunet-a-t-brats": "vtunet-a-t",
    "vtunet-a-s-brats": "vtunet-a-s",
    "vtunet-a-b-brats": "vtunet-a-b",
}
WITH_OUTPUTS = [
    "qtunet-t-brats",
    "qtunet-s-brats",
    "qtunet-b-brats",
    "qtunet-t-btcv",
    "qtunet-a-t-brats",
    "vtunet-t-brats",
    "vtunet-a-t-brats",
]
ALL_NAMES = sorted(set(GOLDEN_NAMES.values()))
QT_WITH_WEIGHTS = ["qtunet-t", "qtunet-s", "qtunet-b"]
SIZE_DIR = {"qtunet-t": "Tiny", "qtunet-s": "Small", "qtunet-b": "Base"}
TAG_FILE = {
    "ct-ssl": ("CT-SSL", 1, (96, 96, 96)),
    "brats-ssl": ("BraTS-SSL", 4, (128, 128, 128)),
    "msd-task02-ssl": ("MSD-SSL-Task02", 1, (96, 96, 96)),
    "msd-task04-ssl": ("MSD-SSL-Task04", 1, (96, 96, 96)),
    "msd-task05-ssl": ("MSD-SSL-Task05", 2, (96, 96, 96)),
}


def _golden_overrides(golden_id: str) -> dict:
    c = golden.load(golden_id)["config"]
    return dict(in_chans=c["in_chans"], num_classes=c["num_classes"], img_size=tuple(c["img_size"]))


def _build(name: str, device: str = "cpu", **overrides) -> QTUNet:
    spec = get_spec(name)
    with torch.device(device):
        return spec.builder(**{**spec.model_args, **overrides}).eval()


def _build_for_golden(golden_id: str, device: str = "cpu") -> QTUNet:
    return _build(GOLDEN_NAMES[golden_id], device, **_golden_overrides(golden_id))


def _reference_sd(golden_id: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    ints = {k: v for k, v in model.state_dict().items() if not v.is_floating_point()}
    return golden.reference_state_dict(golden_id, ints)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------- golden parity


@pytest.mark.parametrize("golden_id", WITH_OUTPUTS)
def test_matches_reference_output(golden_id):
    model = _build_for_golden(golden_id)
    assert _trainable(model) == golden.load(golden_id)["param_count"]
    sd = _reference_sd(golden_id, model)
    golden.check_weights_rule(golden_id, sd)
    converted = convert(sd, get_spec(GOLDEN_NAMES[golden_id]))
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        out = model(golden.golden_input(golden_id))
    golden.assert_matches_outputs(golden_id, out)


@pytest.mark.parametrize("golden_id", sorted(GOLDEN_NAMES))
def test_state_dict_and_param_count_match_reference_manifest(golden_id):
    g = golden.load(golden_id)
    model = _build_for_golden(golden_id, "meta")
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == [tuple(entry) for entry in g["state_dict_manifest"]]
    assert _trainable(model) == g["param_count"]


def test_relative_position_index_is_a_persistent_int64_buffer():
    model = _build("qtunet-t", "meta")
    key = "encoder.layers.0.blocks.0.attn.relative_position_index"
    assert key in model.state_dict()
    assert model.state_dict()[key].dtype == torch.int64
    assert key not in dict(model.named_parameters())


# ------------------------------------------------------------------------- checkpoints


def _lightning(sd: dict[str, torch.Tensor], prefix: str, **extra_tensors) -> dict:
    return {
        "epoch": 349,
        "global_step": 291_900,
        "pytorch-lightning_version": "1.6.0",
        "state_dict": {**{prefix + k: v for k, v in sd.items()}, **extra_tensors},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4e-4, "params": [0, 1]}]}],
        "lr_schedulers": [{"T_max": 350, "last_epoch": 349}],
    }


@pytest.mark.parametrize(
    ("golden_id", "prefix"),
    [
        ("qtunet-t-brats", "model."),
        ("qtunet-a-t-brats", "model."),
        ("vtunet-t-brats", "swin_unet."),
        ("vtunet-a-t-brats", "model."),
    ],
)
def test_lightning_checkpoint_converts_and_loads_strictly(tmp_path, golden_id, prefix):
    model = _build_for_golden(golden_id)
    sd = _reference_sd(golden_id, model)
    path = tmp_path / "last.ckpt"
    torch.save(_lightning(sd, prefix), path)
    converted = convert(read_checkpoint(path), get_spec(GOLDEN_NAMES[golden_id]))
    model.load_state_dict(converted, strict=True)
    assert converted.keys() == sd.keys()
    assert all(torch.equal(converted[k], sd[k]) for k in sd)


def test_lightning_checkpoint_with_the_other_prefix_is_refused():
    model = _build_for_golden("vtunet-t-brats", "meta")
    sd = {k: torch.zeros(1) for k in model.state_dict()}
    with pytest.raises(CheckpointFormatError, match="swin_unet"):
        convert(_lightning(sd, "model."), get_spec("vtunet-t"))


def test_lightning_entries_outside_the_network_are_dropped_and_logged(caplog):
    model = _build_for_golden("qtunet-t-brats", "meta")
    sd = {k: torch.zeros(1) for k in model.state_dict()}
    ckpt = _lightning(sd, "model.", **{"loss.class_weight": torch.ones(3)})
    with caplog.at_level("WARNING", logger="zoo.convert.qtunet"):
        converted = convert(ckpt, get_spec("qtunet-t"))
    assert set(converted) == set(sd)
    assert "loss." in caplog.text


def _upstream_encoder_file(golden_id: str) -> dict[str, torch.Tensor]:
    """The released SSL file's layout: the encoder.* subset, flat, unprefixed."""
    model = _build_for_golden(golden_id)
    return {k: v for k, v in _reference_sd(golden_id, model).items() if k.startswith("encoder.")}


def test_upstream_ssl_encoder_file_loads_as_encoder_only_through_create(tmp_path):
    enc = _upstream_encoder_file("qtunet-t-btcv")
    assert len(enc) == 113  # the spec's count of encoder.* entries, buffers included
    path = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(enc, path)
    model = zoo.create("qtunet-t", checkpoint_path=path)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in enc.items())


def test_ssl_harness_lightning_checkpoint_yields_the_online_encoder():
    enc = _upstream_encoder_file("qtunet-t-btcv")
    online = {"online_network." + k: v for k, v in enc.items()}
    extra = {
        "online_network.projector.model.0.weight": torch.zeros(4096, 384 * 27),
        "target_network.encoder.norm.weight": torch.full((384,), 7.0),
        "rotation_head.1.model.3.bias": torch.zeros(4),
        "reconstruction_head.weight": torch.zeros(384, 1, 32, 32, 32),
    }
    ckpt = {"epoch": 149, "state_dict": {**online, **extra}}
    converted = convert(ckpt, get_spec("qtunet-t"))
    assert converted.keys() == enc.keys()
    assert torch.equal(converted["encoder.norm.weight"], enc["encoder.norm.weight"])


def test_qt_encoder_checkpoint_is_refused_for_vt_models():
    enc = _upstream_encoder_file("qtunet-t-btcv")
    with pytest.raises(CheckpointFormatError, match="VT-UNet"):
        convert(enc, get_spec("vtunet-t"))


def test_converter_refuses_what_it_does_not_know():
    with pytest.raises(CheckpointFormatError):
        convert([1, 2, 3], get_spec("qtunet-t"))
    with pytest.raises(CheckpointFormatError, match="encoder"):
        convert({"conv1.weight": torch.zeros(1)}, get_spec("qtunet-t"))
    with pytest.raises(CheckpointFormatError, match="state_dict"):
        convert({"model.encoder.norm.weight": torch.zeros(1)}, get_spec("qtunet-t"))


# ------------------------------------------------------------------------- inputs


def test_wrong_channel_count_raises_naming_the_expected_shape():
    model = _build("qtunet-t")
    with pytest.raises(ValueError, match=r"\(B, 1, 96, 96, 96\).*\(1, 4, 96, 96, 96\)"):
        model(torch.zeros(1, 4, 96, 96, 96))


@pytest.mark.parametrize("name", ["qtunet-t", "vtunet-t"])
def test_wrong_spatial_size_raises_and_points_to_sliding_window(name):
    model = _build(name)
    with pytest.raises(ValueError, match=r"\(B, 1, 96, 96, 96\)(.|\n)*sliding-window"):
        model(torch.zeros(1, 1, 128, 128, 128))
    with pytest.raises(ValueError, match="expects input"):
        model(torch.zeros(1, 96, 96, 96))


@pytest.mark.parametrize("img_size", [(96, 96, 100), (80, 80, 80), (64, 96, 128)])
def test_constructor_rejects_sizes_the_reference_cannot_take(img_size):
    with pytest.raises(ValueError, match="img_size"):
        QTUNet(img_size=img_size)


def test_non_cubic_depth_is_accepted_when_h_equals_w():
    model = QTUNet(embed_dim=24, img_size=(64, 32, 32), in_chans=1, num_classes=2, decoder="vt").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 32, 32)).shape == (1, 2, 64, 32, 32)


# ------------------------------------------------------------------------- registry


def test_registry_holds_the_twelve_models_with_their_configs():
    assert zoo.list_models("qtunet*") + zoo.list_models("vtunet*") == [
        "qtunet-a-b", "qtunet-a-s", "qtunet-a-t", "qtunet-b", "qtunet-s", "qtunet-t",
        "vtunet-a-b", "vtunet-a-s", "vtunet-a-t", "vtunet-b", "vtunet-s", "vtunet-t",
    ]  # fmt: skip
    for name in ALL_NAMES:
        spec = get_spec(name)
        assert spec.family == "qtunet"
        assert spec.model_args["embed_dim"] == {"t": 48, "s": 72, "b": 96}[name[-1]]
        assert spec.input_size == (1, 96, 96, 96)
        assert spec.head_keys == ("output.",)


@pytest.mark.parametrize("name", QT_WITH_WEIGHTS)
def test_upstream_ssl_weights_are_pinned_to_the_repository_blobs(name):
    spec = get_spec(name)
    assert spec.default_tag == "ct-ssl"
    assert sorted(spec.tags) == sorted(TAG_FILE)
    blobs = {f["path"]: f["git_blob_sha1"] for f in UPSTREAM["files"]}
    for tag, (ds, in_chans, img_size) in TAG_FILE.items():
        w = spec.weight(tag)
        path = f"Pretrained_weights/{SIZE_DIR[name]}/{ds}_pretrained.pt"
        assert w.url == UPSTREAM["raw_url_pattern"].format(commit=UPSTREAM["commit"], path=path)
        assert w.upstream_digest == f"gitsha1:{blobs[path]}"
        assert (w.in_chans, w.img_size, w.covers) == (in_chans, img_size, "encoder")
        assert (w.license, w.redistributable, w.hf_hub_id) == ("none", False, None)
        assert w.preprocessing["spacing_mm"] and w.preprocessing["intensity"]


@pytest.mark.parametrize("name", sorted(set(ALL_NAMES) - set(QT_WITH_WEIGHTS)))
def test_models_without_published_weights_say_why(name):
    spec = get_spec(name)
    assert spec.weights == () and spec.default_tag is None
    assert "QT-UNet" in spec.no_weights_reason


@pytest.mark.parametrize("name", ALL_NAMES)
def test_encoder_prefixes_cover_exactly_the_encoder(name):
    spec = get_spec(name)
    keys = list(_build(name, "meta").state_dict())
    enc = [k for k in keys if k.startswith(spec.encoder_prefixes)]
    assert f"{spec.first_conv}.weight" in enc
    assert not any(k.startswith(("layers_up.", "norm_up.", "up.", "output.")) for k in enc)
    assert len(enc) == 113  # patch embed 4 + 7 blocks × 14 + 3 mergings × 3 + final norm 2


@pytest.mark.parametrize("golden_id", [g for g in sorted(GOLDEN_NAMES) if g.endswith("-brats")])
def test_brats_config_numbers_are_the_reference_and_near_the_paper(golden_id):
    spec = get_spec(GOLDEN_NAMES[golden_id])
    meta = spec.meta
    assert meta["params_brats"] == golden.load(golden_id)["param_count"]
    model = _build_for_golden(golden_id, "meta")
    c = golden.load(golden_id)["config"]
    x = torch.zeros(1, c["in_chans"], *c["img_size"], device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    gmacs = fc.get_total_flops() / 2e9
    assert gmacs == pytest.approx(meta["gmacs_brats"], rel=1e-3)
    # The paper's fvcore counts also include LayerNorms, so they sit 1–3 % above ours.
    assert 0.97 * meta["paper_gmacs"] < gmacs < meta["paper_gmacs"]
    if spec.name == "qtunet-t":  # the paper's 6.4 M is off; the code has 6.65 M
        assert meta["params_brats"] == pytest.approx(6.65e6, rel=1e-3)
    else:
        assert meta["params_brats"] == pytest.approx(meta["paper_params"], rel=0.01)


# ------------------------------------------------------------------------- window helpers


def _reference_style_mask(padded, window, shift):
    # Swin's construction: label the 27 slices region by region, then compare windows.
    img = torch.zeros(1, *padded, 1)
    cnt = 0
    slices = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift, strict=True)]
    for d in slices[0]:
        for h in slices[1]:
            for w in slices[2]:
                img[:, d, h, w, :] = cnt
                cnt += 1
    win = window_partition(img, window).squeeze(-1)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


@pytest.mark.parametrize(
    ("padded", "window", "shift"),
    [
        ((35, 35, 35), (7, 7, 7), (3, 3, 3)),
        ((35, 4, 4), (7, 4, 4), (3, 0, 0)),
        ((14, 14, 7), (7, 7, 7), (3, 3, 3)),
    ],
)
def test_shifted_window_mask_matches_swins_slice_construction(padded, window, shift):
    assert torch.equal(
        shifted_window_mask(padded, window, shift), _reference_style_mask(padded, window, shift)
    )


def test_get_window_size_clamps_window_and_shift_on_small_axes():
    assert get_window_size((24, 6, 3), (7, 7, 7), (3, 3, 3)) == ((7, 6, 3), (3, 0, 0))
    assert get_window_size((32, 32, 32), (7, 7, 7)) == (7, 7, 7)


def test_window_round_trips_undo_padding_and_shift():
    x = torch.randn(2, 10, 9, 8, 5)
    windows = to_windows(x, (7, 7, 7), (3, 3, 3))
    assert windows.shape == (2 * 2 * 2 * 2, 343, 5)
    assert torch.equal(from_windows(windows, (7, 7, 7), (3, 3, 3), 2, (10, 9, 8)), x)
    y = torch.randn(1, 14, 7, 21, 3)
    assert torch.equal(window_reverse(window_partition(y, (7, 7, 7)), (7, 7, 7), 1, 14, 7, 21), y)
