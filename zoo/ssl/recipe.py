"""What every pretraining recipe provides, and the table of recipes by method name.

A :class:`Recipe` wraps a zoo model with its pretext heads and losses and is itself the
module the generic loop (``zoo.train.train``) trains; ``export`` gives the checkpoint that
``zoo.create(..., checkpoint_path=)`` loads. Everything a run must resume (heads, momentum
targets, cluster labels, memory banks, the step counter) lives in the recipe's own
``state_dict``, as tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.ssl.data import Preprocessing

__all__ = ["Export", "Recipe", "RECIPES", "register_recipe", "freeze_grads_while"]


@dataclass
class Export:
    """The checkpoint a recipe produces.

    Attributes:
        state_dict: tensors in the zoo model's own key naming.
        covers: ``"full"``, ``"encoder"`` or a declared component (``"inter"``): what
            ``zoo.load_weights`` must find in it.
        model_name: registry name the checkpoint is for, when not the recipe's model
            (a DINO backbone, a stage without prototypes).
        model_args: constructor arguments to record, when not the recipe model's.
        untrained: key prefixes saved only so the checkpoint loads as a whole, never trained
            by the pretext task (an output head the pretext head replaced).
    """

    state_dict: dict[str, torch.Tensor]
    covers: str = "full"
    model_name: str | None = None
    model_args: dict[str, Any] | None = None
    untrained: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class Recipe(nn.Module):
    """A self-supervised pretext task around a zoo model.

    The recipe *is* the module that ``zoo.train.train`` trains: calling it on a batch
    returns ``(loss, logs)``. Subclasses set the class attributes and implement
    ``dataset``, ``training_step`` and ``export``; ``before_step`` runs at the start of
    every optimiser step (momentum targets, prototype normalisation, k-means), with the
    step read from the recipe's own counter, which is saved and resumed with its state.

    Attributes:
        method: the name ``zoo pretrain METHOD`` takes.
        families: model families the recipe accepts.
        covers: what its checkpoint covers (``"full"`` or ``"encoder"``).
        paper: where the recipe comes from, for the checkpoint metadata.
        default_preprocessing: the paper's input pipeline.
        optim_defaults: the paper's optimiser and schedule (see ``zoo.ssl.runner``).

    Args:
        model: the zoo model to pretrain (its parameters are the recipe's ``model.*``).
        max_steps: total optimiser steps of the run (momentum and temperature schedules).
        grad_accum_steps: batches per optimiser step (the step counter counts batches).
    """

    method: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ()
    covers: ClassVar[str] = "full"
    paper: ClassVar[str] = ""
    default_preprocessing: ClassVar[Preprocessing] = Preprocessing(crop_foreground=True)
    optim_defaults: ClassVar[dict[str, Any]] = {}
    # Optional packages the recipe needs (all in the [train] extra), checked before anything is built.
    requires: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Recipe:
        # Before any subclass __init__ runs: a missing [train] extra is the first thing to report.
        if cls.requires:
            from zoo._optional import require

            require(*cls.requires, extra="train", feature=f"the {cls.method or 'pretraining'} recipe")
        return super().__new__(cls)

    def __init__(self, model: nn.Module, max_steps: int = 1000, grad_accum_steps: int = 1) -> None:
        super().__init__()
        self.model = model
        self.max_steps = int(max_steps)
        self.grad_accum_steps = int(grad_accum_steps)
        self.batch_size = int(self.optim_defaults.get("batch_size", 2))  # per process; set by the runner
        self.config: dict[str, Any] = {}
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.current_step = 0
        self.run_dir: Path | None = None  # the run folder (set by the runner before ``setup``)
        self.is_main = True  # rank 0 (set by the runner); only it writes files

    @property
    def step(self) -> int:
        """Optimiser steps taken so far (resumes with the recipe's state)."""
        return int(self.batches_seen) // self.grad_accum_steps

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """One training batch → ``(loss, logs)``; what ``zoo.train.train``'s ``loss_fn`` calls."""
        step = self.step
        self.current_step = step
        if self.training:
            if int(self.batches_seen) % self.grad_accum_steps == 0:
                self.before_step(step)
            self.batches_seen += 1
        return self.training_step(batch, step)

    # -- what subclasses provide -------------------------------------------------------------

    def dataset(self, volumes: Sequence[torch.Tensor], length: int | None = None) -> Dataset:
        """The training items drawn from preprocessed volumes."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch and the numbers to log (``{"loss": …, parts …}``)."""
        raise NotImplementedError

    def export(self) -> Export:
        """The checkpoint tensors in the zoo model's naming."""
        raise NotImplementedError

    # -- hooks ---------------------------------------------------------------------------------

    def setup(self, dataset: Dataset) -> None:
        """Once before training, after the dataset exists (offline clustering, memory banks)."""

    def prepare_resume(self, state: Mapping[str, torch.Tensor]) -> None:
        """Before a resumed run loads ``state`` strictly: size what depends on the data."""

    def before_step(self, step: int) -> None:
        """At the start of optimiser step ``step`` (0-based), before its forward pass."""


def freeze_grads_while(params: Iterable[nn.Parameter], frozen: Callable[[], bool]) -> None:
    """Zero the gradients of ``params`` while ``frozen()`` is true (SwAV's frozen prototypes).

    A gradient hook rather than ``requires_grad`` toggling, so the parameters stay known to
    DistributedDataParallel and the optimiser throughout.
    """
    for p in params:
        if p.requires_grad:
            p.register_hook(lambda g: torch.zeros_like(g) if frozen() else g)


RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: make ``cls`` available as ``zoo pretrain <cls.method>``."""
    if not cls.method or cls.method in RECIPES:
        raise ValueError(f"recipe method name {cls.method!r} is empty or taken")
    RECIPES[cls.method] = cls
    return cls
