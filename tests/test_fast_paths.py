"""Fast inference paths: cached window-attention masks, channels-last convolutions, zoo.fast.

The window attention of QT-UNet and PCT-Net runs through ``scaled_dot_product_attention`` on
windows gathered by a cached plan, with relative-position bias + shift mask cached per input
size while gradients are off. These tests hold that path to the plain computation (pad, roll,
partition, explicit softmax with the full (nW, N, N) mask), check that the cache follows the
weights, and hold ``zoo.fast`` to its documented deviation bounds. The golden parity tests in
test_qtunet.py / test_pctnet.py / test_deformattn.py check the whole models against the authors.
"""

from __future__ import annotations

import pytest
import torch

import zoo.fast
from zoo.layers.window_attention_3d import (
    from_windows,
    gather_windows,
    get_window_size,
    scatter_windows,
    shifted_window_mask,
    to_windows,
    window_plan,
)
from zoo.models.pctnet import PCTNet, SwinBlock3D
from zoo.models.qtunet import QTBlock3D, QTUNet


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def _plain_window_attention(attn, windows, mask, bias, scale):
    """softmax(scale·q·kᵀ + bias + mask)·v with explicit tensors, as the reference codes do."""
    bw, n, c = windows.shape
    h = attn.num_heads
    q, k, v = attn.qkv(windows).reshape(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    a = (q * scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        a = (a.view(bw // nw, nw, h, n, n) + mask[None, :, None]).view(bw, h, n, n)
    out = (a.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
    return attn.proj(out)


def _plain_qt_block(blk: QTBlock3D, x: torch.Tensor) -> torch.Tensor:
    b, *size, _ = x.shape
    win, shift = get_window_size(size, blk.window_size, blk.shift_size)
    padded = [-(-s // w) * w for s, w in zip(size, win, strict=True)]
    mask = shifted_window_mask(padded, win, shift) if any(shift) else None
    n = win[0] * win[1] * win[2]
    a = _plain_window_attention(
        blk.attn, to_windows(x, win, shift), mask, blk.attn.position_bias(n), blk.attn.scale
    )
    x = blk.norm1(x + from_windows(a, win, shift, b, size))
    return blk.norm3(x + blk.mlp(x))


def _qt_block(shift: int, seed: int = 0) -> QTBlock3D:
    torch.manual_seed(seed)
    blk = QTBlock3D(12, 3, (7, 7, 7), (shift,) * 3).eval()
    with torch.no_grad():  # a non-trivial bias (the default init is tiny)
        blk.attn.relative_position_bias_table.normal_(0, 1)
    return blk


@pytest.mark.parametrize(
    ("size", "shift", "batch"),
    [((10, 9, 8), 3, 2), ((14, 14, 14), 3, 1), ((6, 6, 6), 3, 1), ((12, 12, 12), 0, 3)],
)
def test_qt_block_cached_path_equals_plain_padded_rolled_attention(size, shift, batch):
    blk = _qt_block(shift)
    x = torch.randn(batch, *size, 12)
    with torch.no_grad():
        want = _plain_qt_block(blk, x)
    with torch.inference_mode():
        first = blk(x)  # builds and caches the masks
        second = blk(x)  # reuses them
    torch.testing.assert_close(first, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, want, rtol=1e-5, atol=1e-5)


def test_pctnet_swin_block_cached_path_equals_plain_attention_with_nnformer_index():
    torch.manual_seed(0)
    blk = SwinBlock3D(16, (9, 9, 9), 4, window=6, shift=3).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 1)
    x = torch.randn(2, 9, 9, 9, 16)
    with torch.no_grad():
        win, sh = (6, 6, 6), (3, 3, 3)
        mask = shifted_window_mask((12, 12, 12), win, sh)
        a = _plain_window_attention(
            blk.attn, to_windows(blk.norm1(x), win, sh), mask, blk.attn.position_bias(216), blk.attn.scale
        )
        y = x + from_windows(a, win, sh, 2, (9, 9, 9))
        want = y + blk.mlp(blk.norm2(y))
    with torch.inference_mode():
        got = [blk(x), blk(x)]
    for g in got:
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)


def test_masks_are_built_once_per_input_size_and_batch():
    blk = _qt_block(3)
    x = torch.randn(1, 10, 10, 10, 12)
    with torch.inference_mode():
        blk(x)
        stamp, entries = blk.attn._window_mask_cache
        masks = dict(entries)
        blk(x)
        assert blk.attn._window_mask_cache[1].keys() == masks.keys()
        for key, value in masks.items():  # the very same tensors, not rebuilt
            assert all(a is b for a, b in zip(blk.attn._window_mask_cache[1][key], value, strict=True))
        blk(torch.randn(2, 10, 10, 10, 12))
        assert len(blk.attn._window_mask_cache[1]) == 2


def test_no_cache_is_kept_while_gradients_are_on():
    blk = _qt_block(3)
    x = torch.randn(1, 10, 10, 10, 12)
    blk(x).sum().backward()
    assert "_window_mask_cache" not in blk.attn.__dict__
    assert blk.attn.relative_position_bias_table.grad.abs().sum() > 0


def test_cache_is_invalidated_after_load_state_dict_and_in_place_updates():
    blk = _qt_block(3, seed=0)
    other = _qt_block(3, seed=1)
    x = torch.randn(1, 10, 10, 10, 12)
    with torch.inference_mode():
        before = blk(x)  # caches masks of the seed-0 table
    blk.load_state_dict(other.state_dict())
    with torch.no_grad():
        want = _plain_qt_block(blk, x)
    with torch.inference_mode():
        after = blk(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)

    with torch.no_grad():  # an optimiser-style in-place step
        table = blk.attn.relative_position_bias_table
        table.add_(0.5 * torch.randn_like(table))
        want = _plain_qt_block(blk, x)
    with torch.inference_mode():
        torch.testing.assert_close(blk(x), want, rtol=1e-5, atol=1e-5)


def test_gather_and_scatter_are_inverse_and_drop_the_padding():
    x = torch.randn(2, 10, 9, 8, 5)
    plan = window_plan((10, 9, 8), (7, 7, 7), (3, 3, 3))
    windows = gather_windows(x, plan)
    assert windows.shape == (plan.num_windows * 343, 2, 5)
    assert int((windows.abs().sum((1, 2)) == 0).sum()) == 14**3 - 10 * 9 * 8  # zero padding tokens
    torch.testing.assert_close(scatter_windows(windows, plan), x, rtol=0, atol=0)


def _tiny_qtunet(decoder: str = "qt") -> QTUNet:
    torch.manual_seed(0)
    return QTUNet(embed_dim=12, in_chans=1, num_classes=3, img_size=(32, 32, 32), decoder=decoder).eval()


@pytest.mark.parametrize("decoder", ["qt", "vt"])
def test_qtunet_batch_of_two_equals_two_single_forwards(decoder):
    model = _tiny_qtunet(decoder)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.inference_mode():
        batched = model(x)
        single = torch.cat([model(x[:1]), model(x[1:])])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_sliding_window_batches_windows_with_the_same_result():
    from zoo.inference import sliding_window_predict

    model = _tiny_qtunet()
    volume = torch.randn(1, 1, 48, 40, 40)
    one = sliding_window_predict(model, volume, roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=1)
    four = sliding_window_predict(model, volume, roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=4)
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-5)


def test_channels_last_internals_return_standard_contiguous_outputs():
    torch.manual_seed(0)
    model = PCTNet(
        in_chans=1,
        num_classes=2,
        img_size=(16, 32, 32),
        feature_chns=(4, 8, 16, 16, 16),
        num_heads=(2, 2, 2),
        window_sizes=(2, 2, 2),
        deep_supervision=True,
    ).eval()
    with torch.inference_mode():
        outs = model(torch.randn(1, 1, 16, 32, 32))
    assert all(o.is_contiguous() for o in outs)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.skipif(not zoo.fast.bf16_supported("cpu"), reason="no native bf16 (AVX-512 BF16/AMX)")
def test_bf16_fast_mode_stays_within_its_documented_deviation():
    model = _tiny_qtunet()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        ref = model(x)
    out = zoo.fast.enable(model, bf16=True)(x)
    assert out.dtype == torch.float32
    assert 0 < _rel_l2(out, ref) < zoo.fast.BF16_REL_L2_BOUND


def test_bf16_is_refused_where_it_would_be_emulated(monkeypatch):
    monkeypatch.setattr(zoo.fast, "bf16_supported", lambda device="cpu": False)
    with pytest.raises(RuntimeError, match="native bf16"):
        zoo.fast.enable(_tiny_qtunet(), bf16=True)
    assert zoo.fast.enable(_tiny_qtunet()).bf16 is False


@pytest.mark.parametrize("kwargs", [{}, {"compile": True}], ids=["default", "compile"])
def test_precision_changes_only_when_the_caller_asks(monkeypatch, kwargs):
    # On a CPU with native bf16 the old default turned autocast on by itself (1.8e-2 deviation).
    monkeypatch.setattr(zoo.fast, "bf16_supported", lambda device="cpu": True)
    fast = zoo.fast.enable(_tiny_qtunet(), **kwargs)
    assert fast.bf16 is False
    assert zoo.fast.enable(_tiny_qtunet(), bf16=True).bf16 is True


def test_fast_model_exposes_the_wrapped_models_attributes_and_refuses_training():
    model = _tiny_qtunet()
    fast = zoo.fast.enable(model, bf16=False)
    assert fast.num_classes == 3 and fast.img_size == (32, 32, 32)
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


@pytest.mark.slow
def test_compiled_fast_mode_stays_within_its_documented_deviation():
    model = _tiny_qtunet()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        ref = model(x)
    out = zoo.fast.enable(model, bf16=False, compile=True)(x)
    assert _rel_l2(out, ref) < zoo.fast.COMPILE_REL_L2_BOUND
