"""BYOL + rotation + reconstruction pretraining of the QT-UNet encoder (QT-UNet §III; spec qtunet §3).

The authors' ``SSLHarness`` (Swin-UNETR's multi-head SSL with BYOL in place of SimCLR):
two views of each crop, each rotated by k·90° (k ∈ {1, 2, 3}) in the first two spatial axes
and then cut by 1–3 cuboid holes (sides 32–64 voxels) filled with uniform noise in the
crop's intensity range. Three heads on the flattened, normed bottleneck ``(B, 8C, S/32…)``:

* reconstruction: ``ConvTranspose3d(8C → in_chans, kernel 32, stride 32)`` against the raw
  crop (not rotated, not cut), L1 per view;
* rotation: ``Linear(flat → 4096, no bias) → BN → ReLU → Linear(4096 → 4)``, CE per view;
* BYOL: projector ``flat → 4096 → BN → ReLU → 256``, predictor ``256 → 4096 → BN → ReLU → 256``,
  a momentum target (encoder + projector) with τ from 0.996 to 1 on a cosine, and
  ``−2 cos(h(v1), z'(v2)) − 2 cos(h(v2), z'(v1))``.

The total is the plain sum. Only the encoder is trained and only the encoder is saved (the
authors' ``*_pretrained.pt`` files hold the online encoder alone): the checkpoint covers
``encoder.*``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.ssl.data import Preprocessing, VolumeCropDataset
from zoo.ssl.recipe import Export, Recipe, register_recipe

__all__ = ["rotate90_views", "coarse_dropout", "BYOLRotRec"]


def rotate90_views(
    x: torch.Tensor, max_k: int = 3, include_identity: bool = False, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each sample by k·90° in the first two spatial axes.

    Args:
        x: ``(B, C, D, H, W)`` with D == H (a rotation in that plane keeps the shape).
        max_k: largest k.
        include_identity: draw k from {0, …, max_k}; the authors' MONAI transform draws from
            {1, …, max_k}, so the rotation head never sees class 0 (reproduced by default).
        generator: random source.

    Returns:
        ``(rotated, k)`` with ``k`` a ``(B,)`` int64 tensor, the rotation class.
    """
    if x.ndim != 5 or x.shape[2] != x.shape[3]:
        raise ValueError(
            f"rotations in the (D, H) plane need (B, C, D, H, W) with D == H, got {tuple(x.shape)}"
        )
    low = 0 if include_identity else 1
    k = torch.randint(low, max_k + 1, (x.shape[0],), generator=generator)
    return torch.stack([torch.rot90(s, int(r), dims=(1, 2)) for s, r in zip(x, k, strict=True)]), k.to(
        x.device
    )


def coarse_dropout(
    x: torch.Tensor,
    holes: tuple[int, int] = (1, 3),
    size: tuple[int, int] = (32, 64),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut random cuboid holes filled with uniform noise in each sample's [min, max] (MONAI
    ``RandCoarseDropout(holes, max_holes, spatial_size, max_spatial_size, fill_value=None)``).

    Args:
        x: ``(B, C, *spatial)``.
        holes: closed range of the number of holes per sample.
        size: closed range of each hole side (per axis), capped at the image size.
        generator: random source.

    Returns:
        ``(out, mask)``: the cut image and a ``(B, *spatial)`` bool map of the holes.
    """
    out = x.clone()
    mask = torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.bool, device=x.device)
    for i in range(x.shape[0]):
        lo, hi = float(x[i].min()), float(x[i].max())
        for _ in range(int(torch.randint(holes[0], holes[1] + 1, (1,), generator=generator))):
            box = []
            for n in x.shape[2:]:
                side = min(n, int(torch.randint(size[0], size[1] + 1, (1,), generator=generator)))
                start = int(torch.randint(0, n - side + 1, (1,), generator=generator))
                box.append(slice(start, start + side))
            region = out[(i, slice(None), *box)]
            noise = torch.rand(region.shape, generator=generator).to(x.device, x.dtype)
            out[(i, slice(None), *box)] = lo + (hi - lo) * noise
            mask[(i, *box)] = True
    return out, mask


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    # pl-bolts / lightly layout: Linear (no bias, BN follows) → BN → ReLU → Linear.
    return nn.Sequential(
        nn.Linear(d_in, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, d_out),
    )


@register_recipe
class BYOLRotRec(Recipe):
    """BYOL + rotation + reconstruction on the QT-UNet encoder; saves the encoder only.

    Args:
        model: a QT-UNet (``qtunet-*``, ``qtunet-a-*``: models with an ``encoder`` module).
        hidden_dim / proj_dim: MLP widths (4096, 256).
        holes / hole_size: coarse-dropout ranges; the paper's 32–64 voxels suit 96³ crops.
        tau: start of the target momentum (cosine to 1 over ``max_steps``).
        include_identity: let the rotation draw 0° (the authors' code never does).

    Heads see the flattened bottleneck ``8C · (S/32)³`` (10,368 for Tiny at 96³), so the
    projector and rotation MLPs are large (≈ 42 M parameters each at that size).
    """

    method = "byol-rot-rec"
    families = ("qtunet",)
    covers = "encoder"
    paper = "QT-UNet (Håversen et al. 2024) §III, SSL.py::SSLHarness"
    # CT-SSL: RAS, 1 mm, z-score of raw HU over nonzero voxels (no clipping), crop foreground.
    default_preprocessing = Preprocessing(
        orientation="RAS",
        spacing_mm=(1.0, 1.0, 1.0),
        intensity={"kind": "zscore_nonzero"},
        crop_foreground=True,
    )
    # SSLHarness: Adam 4e-4, weight decay 1.5e-6, linear warm-up then cosine; batch 32 × 2 accumulated.
    optim_defaults = dict(
        optimizer="adam",
        lr=4e-4,
        weight_decay=1.5e-6,
        batch_size=8,
        schedule="cosine",
        warmup_fraction=10 / 150,
    )

    def __init__(
        self,
        model: nn.Module,
        hidden_dim: int = 4096,
        proj_dim: int = 256,
        holes: tuple[int, int] = (1, 3),
        hole_size: tuple[int, int] = (32, 64),
        tau: float = 0.996,
        include_identity: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, nn.Module) or not hasattr(model, "forward_encoder"):
            raise ValueError(
                f"{type(model).__name__} has no `encoder` module: this recipe pretrains QT-UNet encoders "
                "(qtunet-*, qtunet-a-*), as the paper did"
            )
        self.img_size = tuple(model.img_size)
        # Only the encoder is trained; the decoder stays out of the graph (and of DDP's bookkeeping).
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("encoder."))
        in_chans, embed_dim = model.in_chans, model.embed_dim
        n_stages = len(encoder.layers)
        stride = 4 * 2 ** (n_stages - 1)
        grid = [s // stride for s in self.img_size]
        width = embed_dim * 2 ** (n_stages - 1)
        flat = width * math.prod(grid)
        # kernel = S − (S/32 − 1)·32 per axis, as the harness sizes it (32 for multiples of 32).
        kernel = tuple(s - (g - 1) * stride for s, g in zip(self.img_size, grid, strict=True))
        self.rec_head = nn.ConvTranspose3d(width, in_chans, kernel_size=kernel, stride=stride)
        self.rot_head = nn.Sequential(nn.Flatten(), _mlp(flat, hidden_dim, 4))
        self.projector = _mlp(flat, hidden_dim, proj_dim)
        self.predictor = _mlp(proj_dim, hidden_dim, proj_dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.holes, self.hole_size = tuple(holes), tuple(hole_size)
        self.tau0, self.include_identity = tau, include_identity
        self.config.update(
            hidden_dim=hidden_dim,
            proj_dim=proj_dim,
            holes=list(self.holes),
            hole_size=list(self.hole_size),
            tau=tau,
            include_identity=include_identity,
        )

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> VolumeCropDataset:
        return VolumeCropDataset(volumes, self.img_size, length=length or max(len(volumes), 8))

    def _views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rotated, k = rotate90_views(x, include_identity=self.include_identity)
        cut, _ = coarse_dropout(rotated, self.holes, self.hole_size)
        return cut, k

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raw = batch["image"]
        want = (self.model.in_chans, *self.img_size)
        if raw.ndim != 5 or tuple(raw.shape[1:]) != want:
            raise ValueError(f"expected crops (B, {', '.join(map(str, want))}), got {tuple(raw.shape)}")
        if raw.shape[0] < 2:
            raise ValueError("BYOL's BatchNorm heads need a batch of at least 2 crops")
        (v1, k1), (v2, k2) = self._views(raw), self._views(raw)
        encoder = self.model.encoder
        y1, y2 = encoder(v1)[0], encoder(v2)[0]
        rec = F.l1_loss(self.rec_head(y1), raw) + F.l1_loss(self.rec_head(y2), raw)
        rot = F.cross_entropy(self.rot_head(y1), k1) + F.cross_entropy(self.rot_head(y2), k2)
        h1, h2 = self.predictor(self.projector(y1.flatten(1))), self.predictor(self.projector(y2.flatten(1)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(v1)[0].flatten(1))
            t2 = self.target_projector(self.target_encoder(v2)[0].flatten(1))
        byol = (
            -2 * F.cosine_similarity(h1, t2, dim=-1).mean() - 2 * F.cosine_similarity(h2, t1, dim=-1).mean()
        )
        loss = byol + rec + rot
        return loss, {"loss": loss.item(), "byol": byol.item(), "rec": rec.item(), "rot": rot.item()}

    def momentum(self, step: int) -> float:
        """BYOL target momentum: τ0 → 1 on a cosine over ``max_steps`` (pl-bolts ``BYOLMAWeightUpdate``)."""
        progress = min(step / max(self.max_steps, 1), 1.0)
        return 1 - (1 - self.tau0) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        # The target follows the online weights of the previous step.
        tau = self.momentum(step)
        for online, target in (
            (self.model.encoder, self.target_encoder),
            (self.projector, self.target_projector),
        ):
            for p, q in zip(online.parameters(), target.parameters(), strict=True):
                q.mul_(tau).add_(p.detach(), alpha=1 - tau)
            for b, c in zip(online.buffers(), target.buffers(), strict=True):
                c.copy_(b)

    def export(self) -> Export:
        sd = {f"encoder.{k}": v for k, v in self.model.encoder.state_dict().items()}
        return Export(sd, covers="encoder")
