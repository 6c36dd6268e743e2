"""Bad arguments and bad checkpoints fail with one message naming what was expected and found."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo._factory import CheckpointMismatchError, load_weights
from zoo._registry import get_spec
from zoo.layers import as_int, check_input, int_tuple


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(in_chans="1"), "in_chans must be an int, found str '1'"),
        (dict(img_size="96"), "img_size must be an int or 3 ints, found str '96'"),
        (dict(num_classes=2.0), "num_classes must be an int, found float 2.0"),
        (dict(embed_dim=0), "embed_dim must be an int ≥ 1, found 0"),
        (dict(embed_dim=-48), "embed_dim must be an int ≥ 1, found -48"),
        (dict(img_size=(96, 96)), "img_size must be an int or 3 ints, found 2: (96, 96)"),
        (dict(img_size=(96, 0, 96)), "img_size[1] must be an int ≥ 1, found 0"),
        (dict(in_chans=True), "in_chans must be an int, found bool True"),
        (dict(merge_depth=1), "merge_depth must be True or False, found int 1"),
    ],
)
def test_create_names_the_argument_expected_and_found(kwargs, message):
    with pytest.raises(ValueError) as e:
        zoo.create("qtunet-t", **kwargs)
    assert str(e.value) == f"qtunet-t: {message}"


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("pctnet", dict(feature_chns=(24, 0, 128, 256, 512)), "feature_chns[1] must be an int ≥ 1, found 0"),
        ("pctnet", dict(num_heads=(4, 8, "16")), "num_heads[2] must be an int, found str '16'"),
        ("pctnet", dict(dropout=(0.0, 0.0, 0.2, 1.5, 0.2)), "dropout[3] must be ≤ 1.0, found 1.5"),
        ("logonet", dict(depths="3463"), "depths must be a sequence of ints like (3, 4, 6, 3), found '3463'"),
        ("logonet", dict(dims=(64, 128, 256, 0)), "dims[3] must be an int ≥ 1, found 0"),
        ("swinvit2d-c48", dict(num_heads=(3, 6, 12, -1)), "num_heads[3] must be an int ≥ 1, found -1"),
        ("swinvit2d-c48", dict(window_size=0), "window_size must be an int ≥ 1, found 0"),
        ("resnet50-deformattn", dict(n_frames=64.0), "n_frames must be an int, found float 64.0"),
        ("fmunet", dict(dropout=float("nan")), "dropout must be a number, found nan"),
    ],
)
def test_every_family_checks_widths_depths_heads_and_rates(name, kwargs, message):
    with pytest.raises(ValueError) as e:
        zoo.create(name, **kwargs)
    assert str(e.value) == f"{name}: {message}"


def test_the_registered_builder_checks_too():
    spec = get_spec("qtunet-t")
    with pytest.raises(ValueError, match="qtunet-t: embed_dim must be an int ≥ 1, found 0"):
        spec.builder(**{**spec.model_args, "embed_dim": 0})


def test_a_valid_mode_switch_of_zero_is_accepted():
    model = zoo.create("fmunet", res_mode=0, feature_chns=(4, 8, 16, 32, 64))
    assert model.pretrained_cfg["model_args"]["res_mode"] == 0


def test_layer_helpers():
    assert int_tuple(96, 3, "img_size") == (96, 96, 96)
    assert int_tuple([64, 128, 128], 3, "img_size") == (64, 128, 128)
    with pytest.raises(ValueError, match=r"img_size must be an int or 3 ints, found 2"):
        int_tuple((1, 2), 3, "img_size")
    assert as_int(0, "res_mode", minimum=0) == 0
    with pytest.raises(ValueError, match="found float 2.5"):
        as_int(2.5, "depth")
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\), found 2"):
        check_input(torch.zeros(1, 2, 8, 8, 8), 1, "m")
    with pytest.raises(ValueError, match=r"divisible by 32 \(5 stages\), found \(8, 8, 8\)"):
        check_input(torch.zeros(1, 1, 8, 8, 8), 1, "m", multiple=32, why="5 stages")
    with pytest.raises(ValueError, match=r"expects a 4D input \(B, C, H, W\)"):
        check_input(torch.zeros(1, 1, 8, 8, 8), 1, "m", spatial_dims=2)


def _tiny():
    return zoo.create("logonet", img_size=32, dims=(8, 16, 32, 64), local_dims=(8, 16))


def test_loading_refuses_a_float_parameter_stored_as_int64():
    model = _tiny()
    sd = model.state_dict()
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim > 1)
    sd[key] = sd[key].round().to(torch.int64)
    with pytest.raises(
        CheckpointMismatchError, match=rf"{key}: checkpoint dtype torch.int64 vs model torch.float32"
    ):
        load_weights(_tiny(), sd, get_spec("logonet"))


def test_loading_refuses_an_integer_buffer_stored_as_float():
    model = _tiny()
    sd = model.state_dict()
    key = next(k for k, v in sd.items() if not v.is_floating_point())  # BatchNorm's num_batches_tracked
    sd[key] = sd[key].float() + 0.5
    with pytest.raises(CheckpointMismatchError, match="checkpoint dtype torch.float32 vs model torch.int64"):
        load_weights(_tiny(), sd, get_spec("logonet"))


def test_loading_accepts_a_half_precision_checkpoint(tmp_path):
    model = _tiny()
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, str(path))
    loaded = zoo.create(
        "logonet", img_size=32, dims=(8, 16, 32, 64), local_dims=(8, 16), checkpoint_path=path
    )
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim > 1)
    assert loaded.state_dict()[key].dtype == torch.float32
    assert torch.equal(loaded.state_dict()[key], sd[key].float())


def test_create_from_a_file_with_int64_weights_is_refused(tmp_path):
    sd = dict(_tiny().state_dict())
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim > 1)
    sd[key] = torch.zeros_like(sd[key], dtype=torch.int64)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointMismatchError, match="dtype"):
        zoo.create("logonet", img_size=32, dims=(8, 16, 32, 64), local_dims=(8, 16), checkpoint_path=path)


def test_shared_mlp_and_droppath_are_timms_keys_and_maths():
    timm_layers = pytest.importorskip("timm.layers")
    from zoo.layers import DropPath, Mlp

    theirs = timm_layers.Mlp(12, 30, act_layer=torch.nn.GELU, drop=0.1)
    ours = Mlp(12, 30, drop=0.1)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 5, 12)
    for train in (False, True):
        ours.train(train)
        theirs.train(train)
        torch.manual_seed(3)
        a = ours(x)
        torch.manual_seed(3)
        b = theirs(x)
        assert torch.equal(a, b)
    dp_ours, dp_theirs = DropPath(0.3).train(), timm_layers.DropPath(0.3).train()
    torch.manual_seed(4)
    a = dp_ours(x)
    torch.manual_seed(4)
    assert torch.equal(a, dp_theirs(x)) and not torch.equal(a, x)


def test_an_int_img_size_means_a_square_slice_for_the_slice_based_model():
    # It raised a raw TypeError ('int' object is not iterable) before.
    model = zoo.create("resnet50-deformattn", img_size=64)
    assert model.img_size == (64, 64)
