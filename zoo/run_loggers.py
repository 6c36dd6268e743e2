"""Experiment trackers beside ``log.jsonl``: the same scalars in TensorBoard or MLflow.

A training run writes every ``log.jsonl`` entry to the trackers it was given as well
(``zoo finetune --logger tensorboard --logger mlflow``): a step entry ``{"step", "loss", "lr", …}``
becomes the scalars ``loss``, ``lr``, … at that step, a validation entry ``{"val": {"dice_mean",
…, "step"}}`` the scalars ``val/dice_mean``, … at its step. TensorBoard's event files go to
``RUN/tensorboard/``; MLflow logs to its configured tracking server (``MLFLOW_TRACKING_URI``),
experiment ``medzoo``, one MLflow run named after the run folder. Each tracker is an optional
extra (``medzoo[tensorboard]``, ``medzoo[mlflow]``), required when a run asks for it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo._optional import require

__all__ = ["LOGGERS", "RunLoggers", "scalars_of", "open_loggers"]

LOGGERS = ("tensorboard", "mlflow")


def scalars_of(entry: Mapping[str, Any]) -> tuple[int, dict[str, float]] | None:
    """The step and named scalars of one ``log.jsonl`` entry (None: an entry without a step)."""
    if "val" in entry:
        val = dict(entry["val"])
        step = val.pop("step", None)
        values = {f"val/{k}": v for k, v in val.items()}
    else:
        step = entry.get("step")
        values = {k: v for k, v in entry.items() if k != "step"}
    if step is None:
        return None
    return int(step), {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


class _TensorBoard:
    def __init__(self, out_dir: Path) -> None:
        require("tensorboard", feature="--logger tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, out_dir: Path) -> None:
        require("mlflow", feature="--logger mlflow")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, else MLflow's default
        exp = self.client.get_experiment_by_name("medzoo")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("medzoo")
        self.run_id = self.client.create_run(exp_id, run_name=out_dir.resolve().name).info.run_id

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class RunLoggers:
    """The trackers of one run; :meth:`log` takes ``log.jsonl`` entries."""

    def __init__(self, sinks: Sequence[Any]) -> None:
        self.sinks = list(sinks)

    def log(self, entry: Mapping[str, Any]) -> None:
        scalars = scalars_of(entry)
        if scalars is not None:
            for sink in self.sinks:
                sink.log(*scalars)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_loggers(names: Sequence[str], out_dir: str | Path) -> RunLoggers:
    """The trackers ``names`` (each of :data:`LOGGERS`) for the run in ``out_dir``.

    Raises:
        ValueError: an unknown tracker name.
        zoo._optional.MissingExtraError: its extra is not installed.
    """
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"logger {unknown[0]!r}: expected one of {', '.join(LOGGERS)}")
    kinds = {"tensorboard": _TensorBoard, "mlflow": _MLflow}
    return RunLoggers([kinds[n](Path(out_dir)) for n in dict.fromkeys(names)])
