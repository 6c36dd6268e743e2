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
    torch.testing.assert_close(F.conv3d(x_new, new, stride=4), F.conv3d(x_old, w, stride=4), rtol=1e-5, atol=1e-5)


def test_single_channel_adaptation_is_the_sum_of_the_kernels():
    w = torch.randn(16, 3, 7, 7)
    torch.testing.assert_close(adapt_input_conv(w, 1), w.sum(1, keepdim=True), rtol=1e-6, atol=1e-6)


def test_non_conv_weight_is_rejected():
    with pytest.raises(ValueError, match=r"expected a convolution weight"):
        adapt_input_conv(torch.zeros(4, 4), 1)
