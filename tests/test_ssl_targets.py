"""Pretext targets of the BYOL, multi-clustering, IoU-pair and joint 2D/3D recipes (specs qtunet §3,
logonet §3.1–3.4, ssl4ct §2, deformattn §1.4–1.5): what each task asks the network to predict.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo.ssl.byol_rot_rec import coarse_dropout, rotate90_views
from zoo.ssl.multi_clustering import (
    ClustererHeads,
    PreHead,
    chain_mask,
    fit_clusterers,
    mask_sequence,
    multi_cluster_loss,
    patch_mask,
)
from zoo.ssl.slice_swav import VOLUME_TRANSFORMS, sinkhorn, slice_mask, spherical_kmeans, volume_views


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensor ops on shared, busy cores
    yield
    torch.set_num_threads(before)


def _within_binomial(successes: int, trials: int, p: float, z: float = 5.0) -> bool:
    return abs(successes - trials * p) <= z * math.sqrt(trials * p * (1 - p))


# ----------------------------------------------------------------------- BYOL + rotation + reconstruction


def test_rotation_label_is_the_quarter_turns_applied_and_never_zero_by_default():
    x = torch.randn(64, 1, 8, 8, 4)
    rotated, k = rotate90_views(x, generator=torch.Generator().manual_seed(0))
    assert set(k.tolist()) == {1, 2, 3}  # the authors' MONAI draw: k = randint(3) + 1
    for i in range(64):
        torch.testing.assert_close(torch.rot90(rotated[i], -int(k[i]), dims=(1, 2)), x[i])
    _, k0 = rotate90_views(x, include_identity=True, generator=torch.Generator().manual_seed(0))
    assert 0 in k0.tolist()
    with pytest.raises(ValueError, match="D == H"):
        rotate90_views(torch.randn(1, 1, 8, 6, 8))


def test_coarse_dropout_cuts_one_to_three_boxes_of_noise_in_the_image_range():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, 1, 96, 96, 96) * 3 - 1  # 96³: the paper's crop, so the 32–64 sides apply
    out, mask = coarse_dropout(x, holes=(1, 3), size=(32, 64), generator=g)
    kept = ~mask.unsqueeze(1)
    assert torch.equal(out[kept], x[kept])
    for i in range(10):
        holes = out[i, 0][mask[i]]
        assert float(holes.min()) >= float(x[i].min()) and float(holes.max()) <= float(x[i].max())
        sides = [int(mask[i].any(dim=tuple(d for d in range(3) if d != a)).sum()) for a in range(3)]
        assert all(32 <= s <= 96 for s in sides)  # union of 1–3 boxes with sides 32–64
    frac = mask.float().mean().item()
    assert 0.05 < frac < 0.5


# ----------------------------------------------------------------------- masked multi-clustering


def test_chain_ends_and_masked_slices_follow_phi1_and_chain_length():
    g = torch.Generator().manual_seed(0)
    trials, z, chain = 600, 96, 5
    ends = masked = 0
    interior = 0
    for t in range(trials):
        e, m = chain_mask(z, phi1=0.1, chain=chain, generator=g)
        ends += int(e.sum())
        masked += int(m[: z - chain + 1].sum())  # slices with a full chain of successors
        interior += z - chain + 1
        if t < 50:  # a slice is masked exactly when a chain end lies in it or its next chain − 1 slices
            expect = torch.tensor([bool(e[j : j + chain].any()) for j in range(z)])
            assert torch.equal(m, expect)
    assert _within_binomial(ends, trials * z, 0.1)
    assert _within_binomial(masked, interior, 1 - 0.9**chain, z=6)  # ≈ 0.41 of the slices


def test_patch_masking_rate_is_phi2_and_patches_are_whole():
    g = torch.Generator().manual_seed(0)
    cells = hits = 0
    sizes = set()
    for _ in range(400):
        m, p = patch_mask((96, 96), phi2=0.7, generator=g)
        sizes.add(p)
        grid = m[::p, ::p]
        # Every p × p patch is all masked or all kept.
        assert torch.equal(m, grid.repeat_interleave(p, 0).repeat_interleave(p, 1)[:96, :96])
        cells += grid.numel()
        hits += int(grid.sum())
    assert sizes == {1, 2, 4, 8, 16, 32, 96}
    assert _within_binomial(hits, cells, 0.7)


def test_masked_sequence_zeroes_only_masked_patches_of_masked_slices():
    x = torch.rand(3, 1, 16, 16, 40) + 1
    out, slices, voxels = mask_sequence(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out == 0, voxels.unsqueeze(1))
    assert not voxels[~slices.unsqueeze(1).unsqueeze(1).expand_as(voxels)].any()
    assert slices.any()


def test_clusterers_label_every_slice_with_k_drawn_in_range():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 20)) * 10
    feats = np.concatenate([c + rng.normal(size=(50, 20)) for c in centres]).astype(np.float32)
    labels, ks = fit_clusterers(feats, n_clusterers=8, k_range=(6, 9), iterations=20, fraction=0.2, seed=0)
    assert labels.shape == (300, 8) and all(6 <= k <= 9 for k in ks) and len(set(ks)) > 1
    for i, k in enumerate(ks):
        assert labels[:, i].min() >= 0 and labels[:, i].max() < k
    # With K = the number of well-separated blobs, each blob is one cluster.
    labels, _ = fit_clusterers(feats, n_clusterers=2, k_range=(6, 6), iterations=20, fraction=0.2, seed=1)
    for i in range(2):
        per_blob = [set(labels[j * 50 : (j + 1) * 50, i]) for j in range(6)]
        assert all(len(s) == 1 for s in per_blob) and len(set.union(*per_blob)) == 6
    with pytest.raises(ValueError, match="cannot be split"):
        fit_clusterers(feats[:5], n_clusterers=1, k_range=(6, 6))


def test_pretraining_heads_give_logits_per_slice_clusterer_and_cluster():
    x = torch.randn(2, 8, 32, 16, 24)
    assert PreHead(8, n_clusterers=3, n_classes=7, size=(32, 16, 24))(x).shape == (2, 24, 3, 7)
    assert ClustererHeads(8, ks=(4, 7, 5))(x).shape == (2, 24, 3, 7)


def test_multi_cluster_loss_counts_masked_slices_and_valid_clusters_only():
    ks = [3, 5]
    labels = torch.tensor([[[2, 4], [0, 1]]])  # (B=1, Z=2, N=2)
    logits = torch.zeros(1, 2, 2, 5)
    logits[0, 0, 0, 2] = logits[0, 0, 1, 4] = 1.0  # slice 0 predicted right
    logits[0, 1, 0, 1] = logits[0, 1, 1, 0] = 1.0  # slice 1 predicted wrong
    only0 = multi_cluster_loss(logits, labels, torch.tensor([[True, False]]), ks, tau=0.1)
    only1 = multi_cluster_loss(logits, labels, torch.tensor([[False, True]]), ks, tau=0.1)
    assert only0 < 1e-3 < only1
    # Logits past K_i never count: a huge logit at index 4 of the 3-cluster clusterer changes nothing.
    logits[0, 0, 0, 4] = 100.0
    assert multi_cluster_loss(logits, labels, torch.tensor([[True, False]]), ks, tau=0.1) == pytest.approx(
        float(only0)
    )


# ----------------------------------------------------------------------- joint 2D/3D


def test_sinkhorn_codes_have_the_required_marginals():
    g = torch.Generator().manual_seed(0)
    b, k = 256, 16
    # Skewed scores: most samples prefer prototype 0, so a plain softmax would not be balanced.
    scores = torch.randn(b, k, generator=g) * 0.05
    scores[:, 0] += 0.1
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(q.sum(1), torch.ones(b))  # each sample: one unit of assignment
    soft_cols = torch.softmax(scores / 0.05, 1).sum(0)
    assert (q.sum(0) - b / k).abs().max() < 0.25 * (soft_cols - b / k).abs().max()
    q_many = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(q_many.sum(0), torch.full((k,), b / k), rtol=1e-3, atol=1e-3)  # equal use


def test_seven_of_sixty_four_slices_are_masked_per_volume():
    m = slice_mask(500, 64, 0.1, generator=torch.Generator().manual_seed(0))
    assert (m.sum(1) == 7).all()
    counts = m.sum(0)
    assert _within_binomial(int(counts.max()), 500, 7 / 64, z=6)  # no slice position is favoured


def test_spherical_kmeans_ends_at_a_fixed_point_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(4, 32, generator=g), dim=1)
    x = torch.nn.functional.normalize(
        dirs.repeat_interleave(25, 0) + 0.05 * torch.randn(100, 32, generator=g), dim=1
    )
    centroids, assign = spherical_kmeans(x, 4, iterations=10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(4))
    # Each embedding sits with its most similar centroid; each centroid is its members' mean direction.
    assert torch.equal(assign, (x @ centroids.T).argmax(1))
    for c in assign.unique():
        mean = torch.nn.functional.normalize(x[assign == c].sum(0), dim=0)
        torch.testing.assert_close(centroids[c], mean, rtol=1e-4, atol=1e-4)


def test_two_views_use_two_different_transforms_that_keep_the_shape():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 16, 16)
    v1, v2, picked = volume_views(x)
    assert v1.shape == v2.shape == x.shape
    assert all(a != b and a in VOLUME_TRANSFORMS and b in VOLUME_TRANSFORMS for a, b in picked)
    for name, fn in VOLUME_TRANSFORMS.items():
        y = fn(x[0])
        assert y.shape == x[0].shape and torch.isfinite(y).all(), name
