"""Volume Fusion's pretext target (MIS-FM §3.1, Alg. 1; spec pctnet §3.1–3.2)."""

from __future__ import annotations

import pytest
import torch

from zoo.ssl.volume_fusion import draw_fusion_boxes, fusion_loss, paint_boxes, volume_fusion


def _scans(n: int, shape=(12, 20, 24), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, *shape, generator=g) * 100 + torch.arange(n).view(n, 1, 1, 1, 1) * 1000


def test_fused_volume_is_the_stated_mix_of_the_scan_and_the_next_scan():
    x = _scans(3)
    fused, level = volume_fusion(
        x, num_levels=4, size_min=(2, 2, 2), size_max=(8, 12, 12), generator=torch.Generator().manual_seed(1)
    )
    for i in range(3):
        bg, fg = x[i, 0], x[(i - 1) % 3, 0]  # foreground: the previous entry rolled into place
        alpha = level[i].double() / 4
        expected = alpha * fg.double() + (1 - alpha) * bg.double()
        torch.testing.assert_close(fused[i, 0].double(), expected, rtol=1e-6, atol=1e-3)
        # Pure background and pure foreground voxels are copies of their scan.
        assert torch.equal(fused[i, 0][level[i] == 0], bg[level[i] == 0])
        torch.testing.assert_close(fused[i, 0][level[i] == 4], fg[level[i] == 4])


def test_label_names_the_coefficient_each_voxel_got():
    # Background 0 and foreground 1 make every fused voxel equal to its own α.
    x = torch.stack([torch.zeros(1, 10, 16, 16), torch.ones(1, 10, 16, 16)])
    fused, level = volume_fusion(
        x, num_levels=4, size_min=(2, 2, 2), size_max=(6, 10, 10), generator=torch.Generator().manual_seed(3)
    )
    alpha = fused[0, 0]  # sample 0: background zeros, foreground ones
    assert torch.equal(level[0], torch.round(alpha * 4).long())
    torch.testing.assert_close(alpha, level[0].float() / 4)
    assert set(level.unique().tolist()) <= {0, 1, 2, 3, 4}
    assert len(set(level[0].unique().tolist())) >= 3  # several coefficients appear


def _last_box_level(boxes, point):
    level = 0
    for b in boxes:  # later boxes overwrite earlier ones
        if all(s <= p < e for s, p, e in zip(b.start, point, b.stop, strict=True)):
            level = b.level
    return level


def test_boxes_follow_the_papers_ranges_and_later_boxes_overwrite_earlier_ones():
    shape = (64, 128, 128)
    g = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(30):
        boxes = draw_fusion_boxes(shape, num_levels=4, generator=g)
        counts.append(len(boxes))
        assert 10 <= len(boxes) <= 40
        for b in boxes:
            assert 1 <= b.level <= 4
            for s, e, n, hi in zip(b.start, b.stop, shape, (40, 80, 80), strict=True):
                assert 0 <= s < e <= n and e - s <= hi
        level = paint_boxes(boxes, shape)
        pts = torch.stack([torch.randint(0, n, (200,), generator=g) for n in shape], 1)
        for p in pts.tolist():
            assert level[tuple(p)] == _last_box_level(boxes, p)
    assert min(counts) < 20 and max(counts) > 30  # M ~ U{10..40}, not a constant


def test_a_batch_of_one_scan_is_refused():
    with pytest.raises(ValueError, match="at least 2 scans"):
        volume_fusion(torch.rand(1, 1, 8, 8, 8))


def test_fusion_loss_is_low_for_the_right_map_and_high_for_a_wrong_one():
    level = torch.randint(0, 5, (2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    right = torch.nn.functional.one_hot(level, 5).permute(0, 4, 1, 2, 3).float() * 20
    wrong = torch.roll(right, 1, dims=1)
    assert fusion_loss(right, level) < 0.01 < 1.0 < fusion_loss(wrong, level)
    # Deep supervision: coarser outputs are compared with the pooled one-hot target.
    coarse = torch.nn.functional.avg_pool3d(right, 2)
    assert fusion_loss([right, coarse], level) < fusion_loss([right, torch.roll(coarse, 1, 1)], level)
    with pytest.raises(ValueError, match="num_classes=5"):
        fusion_loss(right[:, :3], level)
