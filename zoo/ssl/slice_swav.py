"""Joint 2D/3D self-supervision of the ResNet-50 + deformable-attention model (Nguyen et al.,
AAAI 2023; spec deformattn §1.4–1.5, §3), in its three stages:

1. ``slice-swav`` — 2D SwAV on the volumes' slices trains ``f_intra``'s ResNet-50 trunk: multi-crop
   (2 × 224 px at scale 0.14–1, 6 × 96 px at 0.05–0.14), horizontal flip, contrast jitter,
   Gaussian blur; head 2048-2048-128, 3000 bias-free prototypes (normalised every step, frozen
   for the first 313 steps), τ 0.1, Sinkhorn ε 0.05, 3 iterations (lightly's ``SwaVLoss``).
   ``slice-deepcluster`` is the DeepCluster-v2 alternative (2 × 224 crops at 0.08–1, 3 × 3000
   clusters, τ 0.1, 10 k-means iterations).
2. ``masked-embedding`` — with the whole ``f_intra`` frozen (ResNet *and* its 5888 → 640
   projection), ``f_inter`` learns to predict the slice embeddings of 7 of the 64 slices replaced
   by a learned mask token (top-k of Gaussian noise, k = ⌈0.1 · 64⌉, the same slices in both
   views), through a ``Linear(640, 640)`` decoder. Loss as coded: the MSE over all 64 positions
   for view 1 plus view 2, divided by ⌊0.1 · 64⌋ = 6 (``loss_on="all"``); the paper's Eq. 15
   takes the masked positions only (``loss_on="masked"``).
3. ``volume-swav`` — the whole model with its 3000 prototypes on the L2-normalised volume
   embedding: SwAV swapped prediction between two views, τ 0.1, Sinkhorn ε 0.05, 3 iterations,
   no queue, prototypes frozen for 313 steps, gradient norm clipped at 2.
   ``volume-deepcluster`` is the DeepCluster-v2 alternative: 3 heads of K = 4; every epoch,
   10 iterations of cosine k-means over a memory bank of both views' embeddings, the centroids
   copied into the prototypes; loss CE(logits / 0.1, assignment) averaged over the heads.

``joint-2d3d`` (``joint-2d3d-deepcluster``) runs the three stages in order on one model.

The 3D views are two *different* transforms drawn from seven in the spirit of torchio's defaults
(flip, affine, anisotropy, noise, blur, bias field, gamma), one per view; volumes are cropped or
padded to 64 × 128 × 128 (slices first), scaled to [0, 1] and, as the 2D trunk saw ImageNet-style
inputs, repeated to 3 channels and normalised with ImageNet's mean and std (spec §5.1, inferred).
The authors optimised with SGD + LARC; the generic loop offers SGD (LARC's trust ratio is left out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from zoo.ssl.data import Preprocessing, SliceDataset, VolumeCropDataset
from zoo.ssl.recipe import Export, Recipe, freeze_grads_while, register_recipe

__all__ = [
    "sinkhorn",
    "spherical_kmeans",
    "slice_mask",
    "VOLUME_TRANSFORMS",
    "volume_views",
    "SliceSwAV",
    "SliceDeepClusterV2",
    "MaskedEmbedding",
    "VolumeSwAV",
    "VolumeDeepClusterV2",
    "PIPELINES",
]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_AUTHORS_PREPROCESSING = Preprocessing(
    orientation="RAS", spacing_mm=None, intensity={"kind": "none"}, crop_foreground=False, axis_order="zyx"
)


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp codes of SwAV (lightly's implementation, all-reduced under torchrun).

    Args:
        scores: ``(B, K)`` prototype scores.

    Returns:
        ``(B, K)`` codes: each row sums to 1 (one sample's assignment); with enough
        iterations each column sums to B / K (equal use of the prototypes).
    """
    from lightly.loss.swav_loss import sinkhorn as _sinkhorn

    return _sinkhorn(scores, iterations=iterations, epsilon=epsilon, gather_distributed=True)


def spherical_kmeans(
    x: torch.Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine k-means (DeepCluster-v2): centroids on the unit sphere.

    Args:
        x: ``(n, d)`` L2-normalised rows.

    Returns:
        ``(centroids (k, d) unit rows, assignments (n,) int64)``; an empty cluster keeps
        its previous centroid.
    """
    if len(x) < k:
        raise ValueError(f"cannot form {k} clusters from {len(x)} embeddings")
    idx = torch.randperm(len(x), generator=generator)[:k].to(x.device)
    centroids = x[idx].clone()
    assign = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(iterations + 1):
        assign = (x @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids[filled] = F.normalize(sums[filled], dim=1)
    return centroids, assign


def slice_mask(
    batch: int, slices: int, ratio: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(batch, slices)`` bool: ⌈ratio · slices⌉ slices per volume, the top-k of Gaussian noise."""
    k = math.ceil(ratio * slices)
    noise = torch.randn(batch, slices, generator=generator)
    mask = torch.zeros(batch, slices, dtype=torch.bool)
    mask.scatter_(1, noise.topk(k, dim=1).indices, True)
    return mask


# -------------------------------------------------------------------------------- 3D views


def _rand(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _flip(v: torch.Tensor) -> torch.Tensor:
    return v.flip(int(torch.randint(1, 4, ())))


def _affine(v: torch.Tensor) -> torch.Tensor:
    angle = math.radians(_rand(-10, 10))
    scale = _rand(0.9, 1.1)
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[1 / scale, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0]], dtype=v.dtype, device=v.device)
    grid = F.affine_grid(theta[None], [1, *v.shape], align_corners=False)
    return F.grid_sample(v[None], grid, align_corners=False, padding_mode="border")[0]


def _anisotropy(v: torch.Tensor) -> torch.Tensor:
    axis = int(torch.randint(1, 4, ()))
    size = list(v.shape[1:])
    low = list(size)
    low[axis - 1] = max(1, round(size[axis - 1] / _rand(1.5, 5)))
    small = F.interpolate(v[None], size=low, mode="nearest")
    return F.interpolate(small, size=size, mode="trilinear", align_corners=False)[0]


def _noise(v: torch.Tensor) -> torch.Tensor:
    return v + torch.randn_like(v) * _rand(0, 0.25)


def _blur(v: torch.Tensor) -> torch.Tensor:
    sigma = _rand(0.1, 2.0)
    r = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-r, r + 1, dtype=v.dtype, device=v.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    out = v[None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape))
    return out[0]


def _bias_field(v: torch.Tensor) -> torch.Tensor:
    coords = [torch.linspace(-1, 1, n, device=v.device, dtype=v.dtype) for n in v.shape[1:]]
    z, y, x = torch.meshgrid(*coords, indexing="ij")
    field = torch.zeros_like(z)
    for i in range(4):  # polynomial of order 3
        for j in range(4 - i):
            for k in range(4 - i - j):
                field = field + _rand(-0.5, 0.5) * z**i * y**j * x**k
    return v * torch.exp(field)[None]


def _gamma(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(min=0) ** math.exp(_rand(-0.3, 0.3))


VOLUME_TRANSFORMS = {
    "flip": _flip,
    "affine": _affine,
    "anisotropy": _anisotropy,
    "noise": _noise,
    "blur": _blur,
    "bias_field": _bias_field,
    "gamma": _gamma,
}


def volume_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Two views of each volume, by two *different* transforms drawn from :data:`VOLUME_TRANSFORMS`.

    Args:
        x: ``(B, 1, N, H, W)`` volumes in [0, 1].

    Returns:
        ``(view1, view2, [(name1, name2) per volume])``.
    """
    names = list(VOLUME_TRANSFORMS)
    v1, v2, picked = [], [], []
    for vol in x:
        a, b = torch.randperm(len(names))[:2].tolist()
        v1.append(VOLUME_TRANSFORMS[names[a]](vol))
        v2.append(VOLUME_TRANSFORMS[names[b]](vol))
        picked.append((names[a], names[b]))
    return torch.stack(v1), torch.stack(v2), picked


def _to_model_input(v: torch.Tensor) -> torch.Tensor:
    """``(B, 1, N, H, W)`` in [0, 1] → ``(B, N, 3, H, W)`` ImageNet-normalised slices."""
    mean = torch.tensor(_IMAGENET_MEAN, device=v.device, dtype=v.dtype).view(1, 1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=v.device, dtype=v.dtype).view(1, 1, 3, 1, 1)
    return (v.permute(0, 2, 1, 3, 4).expand(-1, -1, 3, -1, -1) - mean) / std


def _unit_range(x: torch.Tensor) -> torch.Tensor:
    """Robust min-max to [0, 1] (0.5 and 99.5 percentiles), the inputs the 2D trunk expects."""
    flat = x.flatten()
    sample = flat[torch.randperm(len(flat))[:100_000]] if len(flat) > 100_000 else flat
    lo, hi = torch.quantile(sample.float(), 0.005), torch.quantile(sample.float(), 0.995)
    return ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)


class _UnitVolumes(Dataset):
    """Centre crop/pad to ``(N, H, W)`` (torchio ``CropOrPad``), scaled to [0, 1]: ``(1, N, H, W)``."""

    def __init__(self, volumes: Sequence[torch.Tensor], size: Sequence[int]) -> None:
        self.crops = VolumeCropDataset([_unit_range(v) for v in volumes], size, center=True)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.crops[i]


# -------------------------------------------------------------------------------- 2D stage


class _SliceCrops(Dataset):
    """Multi-crop views of slices: ``{"global": [(3, g, g)] * n_global, "local": [...], "index"}``."""

    def __init__(
        self,
        slices: SliceDataset,
        n_global: int,
        global_size: int,
        global_scale: tuple[float, float],
        n_local: int,
        local_size: int,
        local_scale: tuple[float, float],
    ) -> None:
        from torchvision.transforms import v2

        self.slices = slices
        self.n_global, self.n_local = n_global, n_local

        def pipeline(size: int, scale: tuple[float, float]) -> Any:
            return v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=scale, antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.RandomApply([v2.ColorJitter(brightness=0.8, contrast=0.8)], p=0.8),
                    v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=0.5),
                    v2.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
                ]
            )

        self.global_t = pipeline(global_size, global_scale)
        self.local_t = pipeline(local_size, local_scale)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = _unit_range(self.slices[i]["image"]).expand(3, -1, -1)
        return {
            "global": [self.global_t(s) for _ in range(self.n_global)],
            "local": [self.local_t(s) for _ in range(self.n_local)],
            "index": i,
        }


class _DeformAttnRecipe(Recipe):
    """What the joint 2D/3D stages share: the model check, the data and the trainable part."""

    families = ("deformattn",)
    requires = ("lightly",)
    default_preprocessing = _AUTHORS_PREPROCESSING
    trains: tuple[str, ...] = ()  # model key prefixes this stage updates ("" = all)

    def __init__(self, model: nn.Module, **kw: Any) -> None:
        if not hasattr(model, "intra") or not hasattr(model, "inter"):
            raise ValueError(f"{type(model).__name__} is not a resnet50-deformattn model")
        super().__init__(model, **kw)
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(t) for t in self.trains))

    def _volume_dataset(self, volumes: Sequence[torch.Tensor]) -> Dataset:
        size = (self.model.n_frames, *self.model.img_size)
        return _UnitVolumes(volumes, size)

    def _full_args(self, drop_prototypes: bool = False) -> dict[str, Any] | None:
        args = dict(getattr(self.model, "pretrained_cfg", {}).get("model_args", {}))
        if not args:
            return None
        if drop_prototypes:
            args.pop("nmb_prototypes", None)
        return args


_TRUNK = ("intra.conv1.", "intra.bn1.", "intra.layer1.", "intra.layer2.", "intra.layer3.", "intra.layer4.")


class _SliceStage(_DeformAttnRecipe):
    """Stage 1 scaffolding: slices, the trunk's 2048-d pooled feature, the 2048-2048-128 head."""

    trains = _TRUNK
    covers = "encoder"
    optim_defaults = dict(
        optimizer="sgd",
        lr=0.3,
        momentum=0.9,
        weight_decay=1e-6,
        batch_size=64,
        schedule="cosine",
        warmup_fraction=0.1,
    )

    def __init__(
        self,
        model: nn.Module,
        n_global: int = 2,
        global_size: int = 224,
        global_scale: tuple[float, float] = (0.14, 1.0),
        n_local: int = 6,
        local_size: int = 96,
        local_scale: tuple[float, float] = (0.05, 0.14),
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        from lightly.models.modules.heads import SwaVProjectionHead

        self.projection = SwaVProjectionHead(2048, 2048, 128)
        self.crop_args = (n_global, global_size, tuple(global_scale), n_local, local_size, tuple(local_scale))
        self.config.update(
            n_global=n_global,
            global_size=global_size,
            global_scale=list(global_scale),
            n_local=n_local,
            local_size=local_size,
            local_scale=list(local_scale),
        )

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> Dataset:
        return _SliceCrops(SliceDataset(volumes, axis=0, min_size=32), *self.crop_args)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → L2-normalised 128-d projection of GAP(layer4)."""
        feat = self.model.intra.avgpool(self.model.intra.stage_features(x)[-1]).flatten(1)
        return F.normalize(self.projection(feat), dim=1)

    def export(self) -> Export:
        sd = {k: v for k, v in self.model.state_dict().items() if k.startswith(_TRUNK)}
        return Export(sd, covers="encoder")


@register_recipe
class SliceSwAV(_SliceStage):
    """Stage 1: 2D SwAV on slices (VISSL ``swav_8node_resnet`` settings); saves the ResNet-50 trunk.

    Args:
        model: a ``resnet50-deformattn*`` model (only ``intra``'s trunk is trained).
        n_prototypes / temperature / epsilon / sinkhorn_iterations / freeze_prototypes_steps:
            3000, 0.1, 0.05, 3, 313.
        n_global / global_size / global_scale / n_local / local_size / local_scale: multi-crop.
    """

    method = "slice-swav"
    paper = "Nguyen et al. AAAI 2023 §3 stage 1 (VISSL SwAV)"

    def __init__(
        self,
        model: nn.Module,
        n_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 313,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        from lightly.loss import SwaVLoss

        self.prototypes = nn.Linear(128, n_prototypes, bias=False)
        self.criterion = SwaVLoss(temperature, sinkhorn_iterations, epsilon, sinkhorn_gather_distributed=True)
        self.freeze_prototypes_steps = freeze_prototypes_steps
        freeze_grads_while(
            self.prototypes.parameters(), lambda: self.current_step < self.freeze_prototypes_steps
        )
        self.config.update(
            n_prototypes=n_prototypes,
            temperature=temperature,
            epsilon=epsilon,
            sinkhorn_iterations=sinkhorn_iterations,
            freeze_prototypes_steps=freeze_prototypes_steps,
        )

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        high = [self.prototypes(self.embed(v)) for v in batch["global"]]
        low = [self.prototypes(self.embed(v)) for v in batch["local"]]
        loss = self.criterion(high, low).squeeze()
        return loss, {"loss": loss.item()}


class DeepClusterBank:
    """DeepCluster-v2's memory bank and per-epoch cosine k-means.

    Holds the last embedding of every item and view, ``(views, n, d)``, and the assignment of
    every item per head, ``(heads, n)`` (``-100`` = none yet). ``cluster`` runs k-means per head
    over all views' embeddings and returns the centroids for the prototypes; under torchrun the
    banks of all processes are merged first (each item is seen by one process per epoch). Not
    part of the recipe's state: DistributedDataParallel would broadcast it every step, and a
    resumed run rebuilds it with one pass over the data, as DeepCluster-v2 starts.
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        n_views: int,
        ks: Sequence[int],
        iterations: int = 10,
        device: torch.device | str = "cpu",
    ) -> None:
        self.ks, self.iterations = [int(k) for k in ks], iterations
        self.bank = torch.zeros(n_views, n_items, dim, device=device)
        self.filled = torch.zeros(n_items, dtype=torch.bool, device=device)
        self.assignments = torch.full((len(self.ks), n_items), -100, dtype=torch.long, device=device)
        self.clustered = False

    @torch.no_grad()
    def update(self, index: torch.Tensor, views: Sequence[torch.Tensor]) -> None:
        for v, z in enumerate(views):
            self.bank[v, index] = z.detach().to(self.bank.dtype)
        self.filled[index] = True

    @torch.no_grad()
    def cluster(self, seed: int) -> list[torch.Tensor]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            weight = self.filled.float()
            bank = self.bank * weight[None, :, None]
            dist.all_reduce(bank)
            dist.all_reduce(weight)
            self.bank.copy_(bank / weight.clamp(min=1)[None, :, None])
            self.filled.copy_(weight > 0)
        items = torch.nonzero(self.filled).flatten()
        feats = F.normalize(self.bank[:, items].flatten(0, 1), dim=1)
        g = torch.Generator().manual_seed(seed)
        centroids = []
        self.assignments.fill_(-100)
        for h, k in enumerate(self.ks):
            c, a = spherical_kmeans(feats, k, self.iterations, g)
            # An item's assignment is the cluster of its first view (DeepCluster-v2 assigns per sample).
            self.assignments[h, items] = a.view(self.bank.shape[0], -1)[0]
            centroids.append(c)
        self.clustered = True
        return centroids


def _deepcluster_loss(
    logits: Sequence[torch.Tensor], targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over heads of CE(logits / τ, assignment), ignoring unassigned items (-100)."""
    losses = [
        F.cross_entropy(l / temperature, t, ignore_index=-100) for l, t in zip(logits, targets, strict=True)
    ]
    valid = [x for x in losses if torch.isfinite(x)]
    return torch.stack(valid).mean() if valid else logits[0].sum() * 0.0


def _steps_per_epoch(n_items: int, batch_size: int) -> int:
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return max(1, n_items // (batch_size * world))


@register_recipe
class SliceDeepClusterV2(_SliceStage):
    """Stage 1 alternative: 2D DeepCluster-v2 on slices (VISSL ``deepclusterv2_2crops_resnet``).

    Args:
        ks: clusters per head (3 × 3000).
        temperature / kmeans_iterations: 0.1, 10.
    """

    method = "slice-deepcluster"
    paper = "Nguyen et al. AAAI 2023 §3 stage 1 (VISSL DeepCluster-v2)"

    def __init__(
        self,
        model: nn.Module,
        ks: Sequence[int] = (3000, 3000, 3000),
        temperature: float = 0.1,
        kmeans_iterations: int = 10,
        **kw: Any,
    ) -> None:
        kw.setdefault("n_local", 0)
        kw.setdefault("global_scale", (0.08, 1.0))
        super().__init__(model, **kw)
        self.ks, self.temperature, self.kmeans_iterations = (
            [int(k) for k in ks],
            temperature,
            kmeans_iterations,
        )
        self.prototypes = nn.ModuleList(nn.Linear(128, k, bias=False) for k in self.ks)
        self.bank: DeepClusterBank | None = None
        self.config.update(ks=self.ks, temperature=temperature, kmeans_iterations=kmeans_iterations)

    def _make_bank(self, n_items: int) -> None:
        device = next(self.model.parameters()).device
        self.bank = DeepClusterBank(n_items, 128, self.crop_args[0], self.ks, self.kmeans_iterations, device)

    @torch.no_grad()
    def setup(self, dataset: Dataset) -> None:
        self._make_bank(len(dataset))
        self.n_items = len(dataset)
        was = self.training
        self.eval()
        for i in range(len(dataset)):  # DeepCluster-v2's init_memory pass
            item = dataset[i]
            views = [self.embed(v[None].to(self.bank.bank.device)) for v in item["global"]]
            self.bank.update(torch.tensor([i], device=self.bank.bank.device), views)
        self.train(was)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        if step % _steps_per_epoch(self.n_items, self.batch_size) == 0 or not self.bank.clustered:
            for proto, c in zip(self.prototypes, self.bank.cluster(seed=step), strict=True):
                proto.weight.copy_(c)

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        index = batch["index"]
        views = [self.embed(v) for v in batch["global"]]
        targets = self.bank.assignments[:, index]
        loss = torch.stack(
            [_deepcluster_loss([p(z) for p in self.prototypes], targets, self.temperature) for z in views]
        ).mean()
        self.bank.update(index, views)
        return loss, {"loss": loss.item()}


# -------------------------------------------------------------------------------- 3D stages


@register_recipe
class MaskedEmbedding(_DeformAttnRecipe):
    """Stage 2: masked slice-embedding prediction trains ``f_inter``; ``f_intra`` stays frozen.

    Args:
        model: a ``resnet50-deformattn*`` model.
        mask_ratio: fraction of slices masked (0.1 → 7 of 64).
        loss_on: ``"all"`` (the authors' code) or ``"masked"`` (the paper's Eq. 15).

    The checkpoint holds ``intra`` and ``inter`` (the frozen projection included, so the next
    stage starts from the same slice embeddings), as ``resnet50-deformattn`` without prototypes.
    """

    method = "masked-embedding"
    trains = ("inter.",)
    covers = "full"
    paper = "Nguyen et al. AAAI 2023 §3.2 (mask_swav_3D.py)"
    optim_defaults = dict(
        optimizer="sgd",
        lr=1e-2,
        momentum=0.9,
        weight_decay=1e-6,
        batch_size=4,
        schedule="cosine",
        warmup_fraction=0.1,
    )

    def __init__(self, model: nn.Module, mask_ratio: float = 0.1, loss_on: str = "all", **kw: Any) -> None:
        super().__init__(model, **kw)
        if loss_on not in ("all", "masked"):
            raise ValueError(f"loss_on must be 'all' or 'masked', got {loss_on!r}")
        dim = model.embed_dim
        self.mask_token = nn.Parameter(torch.randn(dim))
        self.decoder = nn.Linear(dim, dim)
        self.mask_ratio, self.loss_on = mask_ratio, loss_on
        self.config.update(mask_ratio=mask_ratio, loss_on=loss_on)

    def train(self, mode: bool = True) -> MaskedEmbedding:
        super().train(mode)
        self.model.intra.eval()  # frozen, BatchNorm statistics included
        return self

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> Dataset:
        return self._volume_dataset(volumes)

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        v1, v2, _ = volume_views(x)
        mask = slice_mask(x.shape[0], self.model.n_frames, self.mask_ratio).to(x.device)[..., None]
        loss = x.new_zeros(())
        for v in (v1, v2):
            inp = _to_model_input(v)
            self.model._check_input(inp)
            with torch.no_grad():
                target = self.model.intra(inp)
            pred = self.decoder(self.model.inter(torch.where(mask, self.mask_token, target)))
            if self.loss_on == "all":
                loss = loss + F.mse_loss(pred, target)
            else:
                loss = loss + F.mse_loss(pred[mask.expand_as(pred)], target[mask.expand_as(target)])
        if self.loss_on == "all":
            # The code's divisor n_mask_tokens = ⌊0.1 · 64⌋ = 6 (at least 1 for short volumes).
            loss = loss / max(1, int(self.model.n_frames * self.mask_ratio))
        return loss, {"loss": loss.item()}

    def export(self) -> Export:
        sd = {k: v for k, v in self.model.state_dict().items() if not k.startswith("prototypes.")}
        return Export(sd, covers="full", model_name="resnet50-deformattn", model_args=self._full_args(True))


@register_recipe
class VolumeSwAV(_DeformAttnRecipe):
    """Stage 3: 3D SwAV over the whole model (``resnet50-deformattn-swav``).

    Args:
        model: a ``resnet50-deformattn`` model with one prototype head (3000).
        temperature / epsilon / sinkhorn_iterations / freeze_prototypes_steps: 0.1, 0.05, 3, 313.
    """

    method = "volume-swav"
    trains = ("",)
    covers = "full"
    paper = "Nguyen et al. AAAI 2023 §3.3 (ssl_swav_3D.py)"
    optim_defaults = dict(
        optimizer="sgd",
        lr=1e-2,
        momentum=0.9,
        weight_decay=1e-6,
        batch_size=12,
        schedule="cosine",
        warmup_fraction=0.1,
        grad_clip=2.0,
    )

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 313,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        if model.prototypes is None or len(list(model.prototypes.children())) != 1:
            raise ValueError("volume-swav needs one prototype head: build resnet50-deformattn-swav")
        from lightly.loss import SwaVLoss

        self.criterion = SwaVLoss(temperature, sinkhorn_iterations, epsilon, sinkhorn_gather_distributed=True)
        self.freeze_prototypes_steps = freeze_prototypes_steps
        freeze_grads_while(
            model.prototypes.parameters(), lambda: self.current_step < self.freeze_prototypes_steps
        )
        self.config.update(
            temperature=temperature,
            epsilon=epsilon,
            sinkhorn_iterations=sinkhorn_iterations,
            freeze_prototypes_steps=freeze_prototypes_steps,
        )

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> Dataset:
        return self._volume_dataset(volumes)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        for p in self.model.prototypes.children():
            p.weight.copy_(F.normalize(p.weight, dim=1))

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2, _ = volume_views(batch["image"])
        _, (s1,) = self.model(_to_model_input(v1))
        _, (s2,) = self.model(_to_model_input(v2))
        loss = self.criterion([s1, s2], []).squeeze()
        return loss, {"loss": loss.item()}

    def export(self) -> Export:
        return Export(self.model.state_dict(), covers="full", model_args=self._full_args())


@register_recipe
class VolumeDeepClusterV2(_DeformAttnRecipe):
    """Stage 3 alternative: 3D DeepCluster-v2 (``resnet50-deformattn-deepcluster``, 3 heads of K = 4).

    Args:
        temperature / kmeans_iterations / freeze_prototypes_steps: 0.1, 10, 313.
    """

    method = "volume-deepcluster"
    trains = ("",)
    covers = "full"
    paper = "Nguyen et al. AAAI 2023 §3.3 (ssl_deepcluster_3D.py)"
    optim_defaults = dict(
        optimizer="sgd",
        lr=1e-2,
        momentum=0.9,
        weight_decay=1e-6,
        batch_size=8,
        schedule="cosine",
        warmup_fraction=0.1,
    )

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.1,
        kmeans_iterations: int = 10,
        freeze_prototypes_steps: int = 313,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        if model.prototypes is None:
            raise ValueError(
                "volume-deepcluster needs prototype heads: build resnet50-deformattn-deepcluster"
            )
        self.heads = list(model.prototypes.children())
        self.temperature, self.kmeans_iterations = temperature, kmeans_iterations
        self.bank: DeepClusterBank | None = None
        self.freeze_prototypes_steps = freeze_prototypes_steps
        freeze_grads_while(
            model.prototypes.parameters(), lambda: self.current_step < self.freeze_prototypes_steps
        )
        self.config.update(
            temperature=temperature,
            kmeans_iterations=kmeans_iterations,
            freeze_prototypes_steps=freeze_prototypes_steps,
        )

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> Dataset:
        return self._volume_dataset(volumes)

    def _make_bank(self, n_items: int) -> None:
        device = next(self.model.parameters()).device
        ks = [h.out_features for h in self.heads]
        self.bank = DeepClusterBank(n_items, self.model.embed_dim, 2, ks, self.kmeans_iterations, device)

    @torch.no_grad()
    def setup(self, dataset: Dataset) -> None:
        self._make_bank(len(dataset))
        self.n_items = len(dataset)
        was = self.training
        self.eval()
        device = self.bank.bank.device
        for i in range(len(dataset)):
            x = dataset[i]["image"][None].to(device)
            v1, v2, _ = volume_views(x)
            z = [self.model.forward_features(_to_model_input(v)) for v in (v1, v2)]
            self.bank.update(torch.tensor([i], device=device), z)
        self.train(was)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        if step % _steps_per_epoch(self.n_items, self.batch_size) == 0 or not self.bank.clustered:
            for head, c in zip(self.heads, self.bank.cluster(seed=step), strict=True):
                head.weight.copy_(c)

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        index = batch["index"]
        v1, v2, _ = volume_views(batch["image"])
        targets = self.bank.assignments[:, index]
        zs, losses = [], []
        for v in (v1, v2):
            z, logits = self.model(_to_model_input(v))
            zs.append(z)
            losses.append(_deepcluster_loss(logits, targets, self.temperature))
        self.bank.update(index, zs)
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item()}

    def export(self) -> Export:
        return Export(self.model.state_dict(), covers="full", model_args=self._full_args())


PIPELINES: dict[str, tuple[str, ...]] = {
    "joint-2d3d": ("slice-swav", "masked-embedding", "volume-swav"),
    "joint-2d3d-deepcluster": ("slice-deepcluster", "masked-embedding", "volume-deepcluster"),
}
