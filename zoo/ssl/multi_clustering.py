"""Masked multi-clustering pretraining of LoGoNet / ULKANet (Masked LoGoNet §3; spec logonet §3).

1. **Pseudo-labels.** Every axial slice of a crop is one sample: the volume ``C × X × Y × Z``
   becomes ``Z × (C·X·Y)``. N = 80 scikit-learn ``MiniBatchKMeans`` clusterers, each with its
   own K drawn uniformly from [80, 500], are fitted by 350 ``partial_fit`` calls on fresh
   random 10 % subsets of all slices, then label every slice.
2. **Masking.** Each slice ends a chain with probability φ1 = 0.1; the chain is that slice
   and its M − 1 = 4 predecessors (chains merge, and stop at the first slice). Each masked
   slice draws a patch size P from {1, 2, 4, 8, 16, 32, 96}, is cut into P × P patches, and
   each patch is zeroed with probability φ2 = 0.7.
3. **Prediction.** A pretraining head replaces the segmentation classifier and predicts,
   for every slice, every clusterer's label; the loss is the cross-entropy of
   ``softmax(logits / τ)``, τ = 0.1, over the masked slices only, every clusterer weighted 1
   (averaged rather than summed: the same optimum, a scale-free learning rate).

Choices where the paper is silent (spec [A]): labels are tied to *fixed* crops drawn once
per volume (random crops would break the slice ↔ label link); masked voxels are set to 0;
heads use 1×1×1 kernels; a clusterer with fewer than K slices in its subset takes K slices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from zoo.ssl.data import Preprocessing
from zoo.ssl.recipe import Export, Recipe, register_recipe

__all__ = [
    "chain_mask",
    "patch_mask",
    "mask_sequence",
    "fit_clusterers",
    "PreHead",
    "ClustererHeads",
    "multi_cluster_loss",
    "MaskedMultiClustering",
]

PATCH_SIZES = (1, 2, 4, 8, 16, 32, 96)


def chain_mask(
    num_slices: int, phi1: float = 0.1, chain: int = 5, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which slices of a sequence are masked: chain ends and the chains they close.

    Returns:
        ``(ends, masked)``, two ``(num_slices,)`` bool tensors: ``ends[j]`` with probability
        ``phi1``; ``masked[j]`` when an end lies in ``j … j + chain − 1``.
    """
    if not 0 <= phi1 <= 1 or chain < 1:
        raise ValueError(f"need 0 <= phi1 <= 1 and chain >= 1, got phi1={phi1}, chain={chain}")
    ends = torch.rand(num_slices, generator=generator) < phi1
    masked = ends.clone()
    for back in range(1, chain):
        masked[:-back] |= ends[back:]
    return ends, masked


def patch_mask(
    shape: Sequence[int],
    patch_sizes: Sequence[int] = PATCH_SIZES,
    phi2: float = 0.7,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """SimMIM-style patch mask of one slice: P × P patches, each masked with probability ``phi2``.

    Returns:
        ``(mask (X, Y) bool, P)``; patches at the far edges are cut to the slice.
    """
    p = int(patch_sizes[int(torch.randint(len(patch_sizes), (1,), generator=generator))])
    grid = [math.ceil(n / p) for n in shape]
    coarse = torch.rand(grid, generator=generator) < phi2
    full = coarse.repeat_interleave(p, 0).repeat_interleave(p, 1)
    return full[: shape[0], : shape[1]], p


def mask_sequence(
    x: torch.Tensor,
    phi1: float = 0.1,
    chain: int = 5,
    patch_sizes: Sequence[int] = PATCH_SIZES,
    phi2: float = 0.7,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask chains of slices (last axis) of each sample and zero their masked patches.

    Args:
        x: ``(B, C, X, Y, Z)``; slices are taken along Z.

    Returns:
        ``(masked x, slice mask (B, Z) bool, voxel mask (B, X, Y, Z) bool)``.
    """
    if x.ndim != 5:
        raise ValueError(f"mask_sequence expects (B, C, X, Y, Z), got {tuple(x.shape)}")
    b, _, nx, ny, nz = x.shape
    slices = torch.zeros(b, nz, dtype=torch.bool)
    voxels = torch.zeros(b, nx, ny, nz, dtype=torch.bool)
    for i in range(b):
        _, slices[i] = chain_mask(nz, phi1, chain, generator)
        for z in torch.nonzero(slices[i]).flatten().tolist():
            voxels[i, :, :, z] = patch_mask((nx, ny), patch_sizes, phi2, generator)[0]
    voxels = voxels.to(x.device)
    return x.masked_fill(voxels.unsqueeze(1), 0.0), slices.to(x.device), voxels


def fit_clusterers(
    features: np.ndarray,
    n_clusterers: int = 80,
    k_range: tuple[int, int] = (80, 500),
    iterations: int = 350,
    fraction: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, list[int]]:
    """Fit the clusterers on slice features and label every slice.

    Args:
        features: ``(n_slices, T)`` float array, one row per slice.
        n_clusterers: N.
        k_range: closed range K is drawn from, uniformly, per clusterer.
        iterations: ``partial_fit`` calls per clusterer, each on a fresh random subset.
        fraction: subset size as a fraction of the slices (at least K slices).
        seed: random seed of the K draws, the subsets and the k-means.

    Returns:
        ``(labels (n_slices, N) int64, [K_i])``.

    Raises:
        ValueError: fewer slices than the largest K drawn.
    """
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    n = len(features)
    ks = [int(k) for k in rng.integers(k_range[0], k_range[1] + 1, size=n_clusterers)]
    if n < max(ks):
        raise ValueError(
            f"{n} slices cannot be split into K={max(ks)} clusters; add volumes or crops, or lower k_range "
            f"(now {tuple(k_range)})"
        )
    feats = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.empty((n, n_clusterers), dtype=np.int64)
    for i, k in enumerate(ks):
        km = MiniBatchKMeans(n_clusters=k, random_state=int(rng.integers(2**31)), n_init=1)
        batch = min(n, max(k, math.ceil(fraction * n)))
        for _ in range(iterations):
            km.partial_fit(feats[rng.choice(n, size=batch, replace=False)])
        labels[:, i] = km.predict(feats)
    return labels, ks


def _conv_bn_gelu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv3d(c_in, c_out, 1), nn.BatchNorm3d(c_out), nn.GELU()]


class PreHead(nn.Module):
    """The paper's pretraining head (Alg. 4, "PREHEAD"): full-resolution features → logits
    per slice × clusterer × cluster.

    Four 1×1×1 convolution pairs act in turn on the feature, y, x and z axes, each axis moved
    into the channel position by a permutation, so that the output is indexed by slice.

    Args:
        in_chans: feature channels (``input_dim``).
        n_clusterers: N (``cluster_num``).
        n_classes: largest K (``class_size``); logits ≥ K_i are masked by the loss.
        size: the crop ``(X, Y, Z)`` the head is built for.

    Shapes:
        ``(B, in_chans, X, Y, Z)`` → ``(B, Z, N, n_classes)``; the final ReLU is the paper's.
    """

    def __init__(self, in_chans: int, n_clusterers: int, n_classes: int, size: Sequence[int]) -> None:
        super().__init__()
        x_dim, y_dim, z_dim = (int(s) for s in size)
        x_mid = max(1, x_dim // 16)
        self.size = (x_dim, y_dim, z_dim)
        self.clusterers = nn.Sequential(
            *_conv_bn_gelu(in_chans, n_clusterers), *_conv_bn_gelu(n_clusterers, n_clusterers)
        )
        self.classes = nn.Sequential(*_conv_bn_gelu(y_dim, n_classes), *_conv_bn_gelu(n_classes, n_classes))
        self.rows = nn.Sequential(*_conv_bn_gelu(x_dim, x_mid), *_conv_bn_gelu(x_mid, 1))
        self.slices = nn.Sequential(*_conv_bn_gelu(z_dim, z_dim), nn.Conv3d(z_dim, z_dim, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.size:
            raise ValueError(
                f"PreHead was built for feature maps of size {self.size}, got {tuple(x.shape[2:])}"
            )
        x = self.clusterers(x)  # (B, N, X, Y, Z)
        x = self.classes(x.permute(0, 3, 2, 1, 4))  # (B, K, X, N, Z)
        x = self.rows(x.permute(0, 2, 1, 3, 4))  # (B, 1, K, N, Z)
        x = self.slices(x.permute(0, 4, 3, 2, 1))  # (B, Z, N, K, 1)
        return x.squeeze(-1)


class ClustererHeads(nn.Module):
    """One linear classifier per clusterer on each slice's pooled features (a lighter head).

    Shapes:
        ``(B, C, X, Y, Z)`` → ``(B, Z, N, max K)``; clusterer ``i`` fills its first K_i logits.
    """

    def __init__(self, in_chans: int, ks: Sequence[int]) -> None:
        super().__init__()
        self.ks = [int(k) for k in ks]
        self.heads = nn.ModuleList(nn.Linear(in_chans, k) for k in self.ks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_slice = x.mean(dim=(2, 3)).transpose(1, 2)  # (B, Z, C)
        k_max = max(self.ks)
        return torch.stack(
            [F.pad(h(per_slice), (0, k_max - k)) for h, k in zip(self.heads, self.ks, strict=True)], 2
        )


def multi_cluster_loss(
    logits: torch.Tensor, labels: torch.Tensor, slice_mask: torch.Tensor, ks: Sequence[int], tau: float = 0.1
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(logits / τ)`` over masked slices and all clusterers.

    Args:
        logits: ``(B, Z, N, max K)``; entries ≥ K_i of clusterer i are ignored.
        labels: ``(B, Z, N)`` cluster indices.
        slice_mask: ``(B, Z)`` bool, the slices that count.
        ks: K_i per clusterer.
    """
    valid = (
        torch.arange(logits.shape[-1], device=logits.device)
        < torch.as_tensor(ks, device=logits.device)[:, None]
    )
    scores = (logits / tau).masked_fill(~valid, float("-inf"))
    picked = scores[slice_mask]  # (S, N, K)
    if picked.numel() == 0:
        return logits.sum() * 0.0  # no masked slice in this batch: nothing to predict
    return F.cross_entropy(picked.flatten(0, 1), labels[slice_mask].flatten(0, 1))


class _FixedCrops(Dataset):
    """The recipe's fixed crops: ``{"image": (C, X, Y, Z), "index": i}``."""

    def __init__(self, volumes: Sequence[torch.Tensor], starts: torch.Tensor, roi: Sequence[int]) -> None:
        self.volumes, self.starts, self.roi = list(volumes), starts, tuple(roi)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, *start = self.starts[i].tolist()
        box = tuple(slice(s, s + r) for s, r in zip(start, self.roi, strict=True))
        return {"image": self.volumes[v][(slice(None), *box)].contiguous(), "index": i}


@register_recipe
class MaskedMultiClustering(Recipe):
    """Masked multi-clustering pretraining of ``logonet``-family models.

    Args:
        model: ULKANet or LoGoNet; its ``classifier`` is replaced by the pretraining head and
            saved untrained (the checkpoint loads as a whole; fine-tune with ``num_classes``).
        n_clusterers / k_range / kmeans_iterations / kmeans_fraction: the clustering (80,
            [80, 500], 350, 10 %).
        phi1 / chain / patch_sizes / phi2: the masking (0.1, 5, {1 … 96}, 0.7).
        tau: softmax temperature (0.1).
        head: ``"prehead"`` (the paper's Alg. 4) or ``"linear"`` (one linear classifier per
            clusterer on slice-pooled features).
        crops_per_volume: fixed crops drawn per volume for labels and training.
        seed: seed of the crops and the clusterers.
    """

    method = "multi-clustering"
    families = ("logonet",)
    requires = ("sklearn",)
    covers = "full"
    paper = "Masked LoGoNet (Monsefi et al., KDD 2024) §3, Alg. 4, Table 12"
    default_preprocessing = Preprocessing(
        orientation="RAS",
        spacing_mm=(1.5, 1.5, 2.0),
        intensity={"kind": "clip_scale", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1},
        crop_foreground=True,
    )
    # Table 12: AdamW (0.9, 0.999), weight decay 1e-5, peak lr 1e-4, warm-up 10 of 100 epochs, cosine.
    optim_defaults = dict(
        optimizer="adamw", lr=1e-4, weight_decay=1e-5, batch_size=1, schedule="cosine", warmup_fraction=0.1
    )

    def __init__(
        self,
        model: nn.Module,
        n_clusterers: int = 80,
        k_range: tuple[int, int] = (80, 500),
        kmeans_iterations: int = 350,
        kmeans_fraction: float = 0.1,
        phi1: float = 0.1,
        chain: int = 5,
        patch_sizes: Sequence[int] = PATCH_SIZES,
        phi2: float = 0.7,
        tau: float = 0.1,
        head: str = "prehead",
        crops_per_volume: int = 4,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        if head not in ("prehead", "linear"):
            raise ValueError(f"head must be 'prehead' or 'linear', got {head!r}")
        if not hasattr(model, "forward_features") or not hasattr(model, "proj"):
            raise ValueError(f"{type(model).__name__} is not a ULKANet/LoGoNet")
        self.roi = tuple(model.img_size)
        self.n_clusterers, self.k_range = n_clusterers, tuple(k_range)
        self.kmeans_iterations, self.kmeans_fraction = kmeans_iterations, kmeans_fraction
        self.phi1, self.chain, self.patch_sizes, self.phi2 = phi1, chain, tuple(patch_sizes), phi2
        self.tau, self.head_kind, self.crops_per_volume, self.seed = tau, head, crops_per_volume, seed
        self.width = model.proj.conv.out_channels if hasattr(model.proj, "conv") else model.out_chans
        # The pretraining head replaces the classifier, which stays out of the graph.
        if getattr(model, "classifier", None) is not None:
            model.classifier.requires_grad_(False)
        self.head: nn.Module | None = None
        # Not buffers: DistributedDataParallel would broadcast them every step. They are written
        # once to <run>/clusters.safetensors and read back on resume.
        self.ks: list[int] = []
        self.crop_starts = torch.zeros(0, 4, dtype=torch.long)
        self.labels = torch.zeros(0, self.roi[2], n_clusterers, dtype=torch.int16)
        self.config.update(
            n_clusterers=n_clusterers,
            k_range=list(self.k_range),
            kmeans_iterations=kmeans_iterations,
            kmeans_fraction=kmeans_fraction,
            phi1=phi1,
            chain=chain,
            patch_sizes=list(self.patch_sizes),
            phi2=phi2,
            tau=tau,
            head=head,
            crops_per_volume=crops_per_volume,
            seed=seed,
        )

    # -- the clustering: computed once per run, kept next to the run ----------------------------------

    CLUSTERS_FILE = "clusters.safetensors"

    def _set_clustering(self, ks: torch.Tensor, crop_starts: torch.Tensor, labels: torch.Tensor) -> None:
        self.ks = [int(k) for k in ks]
        self.crop_starts, self.labels = crop_starts.long().cpu(), labels.to(torch.int16).cpu()
        if self.ks and self.head is None:
            self._build_head()

    def prepare_resume(self, state: Mapping[str, torch.Tensor]) -> None:
        self._read_clusters()

    def _read_clusters(self) -> bool:
        path = self.run_dir / self.CLUSTERS_FILE if self.run_dir else None
        if path is None or not path.is_file():
            return False
        from safetensors.torch import load_file

        c = load_file(str(path))
        self._set_clustering(c["ks"], c["crop_starts"], c["labels"])
        return True

    def _build_head(self) -> None:
        ref = next(self.model.parameters())
        if self.head_kind == "prehead":
            head = PreHead(self.width, len(self.ks), max(self.ks), self.roi)
        else:
            head = ClustererHeads(self.width, self.ks)
        self.head = head.to(ref.device)

    # -- data and labels --------------------------------------------------------------------------

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> Dataset:
        if len(self.crop_starts) == 0:
            g = torch.Generator().manual_seed(self.seed)
            starts = []
            for v, vol in enumerate(volumes):
                if any(n < r for n, r in zip(vol.shape[1:], self.roi, strict=True)):
                    raise ValueError(f"volume {v} {tuple(vol.shape[1:])} is smaller than the crop {self.roi}")
                for _ in range(self.crops_per_volume):
                    starts.append(
                        [
                            v,
                            *(
                                int(torch.randint(0, n - r + 1, (1,), generator=g))
                                for n, r in zip(vol.shape[1:], self.roi, strict=True)
                            ),
                        ]
                    )
            self.crop_starts = torch.tensor(starts, dtype=torch.long)
        return _FixedCrops(volumes, self.crop_starts, self.roi)

    def setup(self, dataset: Dataset) -> None:
        if self.ks or self._read_clusters():  # resumed: the run folder holds the clustering
            return
        slices = []
        for i in range(len(dataset)):
            crop = dataset[i]["image"]  # (C, X, Y, Z) → Z rows of C·X·Y
            slices.append(crop.permute(3, 0, 1, 2).reshape(crop.shape[-1], -1))
        feats = torch.cat(slices).numpy()
        labels, ks = fit_clusterers(
            feats, self.n_clusterers, self.k_range, self.kmeans_iterations, self.kmeans_fraction, self.seed
        )
        labels_t = torch.from_numpy(labels).view(len(dataset), self.roi[2], self.n_clusterers)
        self._set_clustering(torch.tensor(ks), self.crop_starts, labels_t)
        if self.run_dir is not None and self.is_main:
            from safetensors.torch import save_file

            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_file(
                {"ks": torch.tensor(self.ks), "crop_starts": self.crop_starts, "labels": self.labels},
                str(self.run_dir / self.CLUSTERS_FILE),
            )

    # -- training ---------------------------------------------------------------------------------

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        # LoGoNet fuses global and local maps before its proj; ULKANet's features include proj.
        return self.model.proj(feats) if hasattr(self.model, "local_nets") else feats

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if self.head is None:
            raise RuntimeError("call setup(dataset) first: the clusterers label the crops before training")
        x = batch["image"]
        want = (self.model.in_chans, *self.roi)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected crops (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        masked, slice_mask, _ = mask_sequence(x, self.phi1, self.chain, self.patch_sizes, self.phi2)
        logits = self.head(self._features(masked))
        labels = self.labels[batch["index"].cpu()].long().to(x.device)
        loss = multi_cluster_loss(logits, labels, slice_mask, self.ks, self.tau)
        return loss, {"loss": loss.item(), "masked_slices": float(slice_mask.float().mean())}

    def export(self) -> Export:
        return Export(self.model.state_dict(), covers="full", untrained=("classifier.",))
