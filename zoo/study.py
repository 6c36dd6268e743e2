"""Segmentation of a whole study: a folder, a datalist or a glob of NIfTI scans into one output folder.

:func:`predict_study` runs each case as :func:`zoo.predict.predict_nifti` does, with the same
checks: a DataLoader reads and preprocesses the next volumes while the model runs, finished
outputs are skipped (a rerun resumes), a bad file is reported and skipped, and under ``torchrun``
each process takes its share of the cases (no collective: each writes its own files). Every output
is checked before the first case runs: none may be an input scan, two inputs may not share an
output name.
"""

from __future__ import annotations

import functools
import glob as _glob
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.inference import resolve_device, resolve_precision
from zoo.predict import Prediction, PredictSettings, _checked_settings, _run_case, place, preprocess
from zoo.predict_checks import Settings, check_budget, check_output, estimate, inspect_input

log = logging.getLogger("zoo")

__all__ = ["StudySettings", "StudyResult", "auto_workers", "list_cases", "predict_study"]


@dataclass(frozen=True)
class StudySettings(PredictSettings):
    """What the caller asks of a study: each case's :class:`zoo.predict.PredictSettings`, and more.

    Attributes:
        num_workers: reading processes (0: read in this process, no overlap); default
            :func:`auto_workers`.
        rank / world_size: override the ``torchrun`` environment (``RANK``/``WORLD_SIZE``).
    """

    num_workers: int | None = None
    rank: int | None = None
    world_size: int | None = None


@dataclass
class StudyResult:
    """What ``predict_study`` did: cases written, skipped (output already there), failed."""

    written: list[Prediction] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cases: int = 0


_NIFTI = (".nii", ".nii.gz")


def list_cases(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The input files of a study: a folder (its ``*.nii``/``*.nii.gz``), a datalist JSON, a glob.

    A datalist is a list of paths or ``{"image": path}`` entries, or a MONAI datalist whose
    ``testing`` (else ``validation`` and ``training``) entries give ``image``; relative paths are
    relative to the JSON file.

    Raises:
        ValueError: nothing found, or a datalist of another form.
    """
    if isinstance(source, list | tuple):
        return [Path(p) for p in source]
    text = str(source)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.endswith(_NIFTI) and not f.name.startswith("."))
        if not files:
            raise ValueError(f"{p}: expected .nii or .nii.gz files in the folder, found none")
        return files
    if p.suffix == ".json" and p.is_file():
        try:
            dl = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not a valid JSON datalist ({e})") from e
        if isinstance(dl, dict):
            entries = dl.get("testing") or [*(dl.get("validation") or []), *(dl.get("training") or [])]
        else:
            entries = dl
        paths = []
        for e in entries if isinstance(entries, list) else []:
            image = e.get("image") if isinstance(e, dict) else e
            if isinstance(image, list):
                raise ValueError(f"{p}: one file per case expected, found a list of images {image}")
            if isinstance(image, str):
                paths.append(Path(image) if Path(image).is_absolute() else p.parent / image)
        if not paths:
            raise ValueError(
                f"{p}: expected a list of image paths or a MONAI datalist with 'testing' entries, found none"
            )
        return paths
    if any(ch in text for ch in "*?["):
        files = sorted(Path(f) for f in _glob.glob(text, recursive=True) if f.endswith(_NIFTI))
        if not files:
            raise ValueError(f"{text}: the pattern matches no .nii or .nii.gz file")
        return files
    raise ValueError(f"{text}: expected a folder, a datalist .json or a glob pattern, found no such path")


def _output_name(path: Path) -> str:
    name = path.name
    return name if name.endswith(".nii.gz") else name.removesuffix(".nii") + ".nii.gz"


def _study_outputs(cases: Sequence[Path], out_dir: Path) -> dict[Path, Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: expected an output folder, found a file")
    if out_dir.exists():
        here = os.stat(out_dir)
        for c in cases:
            if c.exists() and os.path.samestat(os.stat(c.parent), here):
                raise ValueError(
                    f"{out_dir} holds the input scans (e.g. {c.name}): refusing to write label maps among "
                    "them, where they could overwrite a scan or be read as one; choose another output folder"
                )
    outs: dict[Path, Path] = {}
    seen: dict[str, Path] = {}
    for c in cases:
        name = _output_name(c)
        if name in seen:
            raise ValueError(f"{c} and {seen[name]} would both be written as {out_dir / name}; rename one")
        seen[name] = c
        outs[c] = out_dir / name
    inputs = {}
    for c in cases:
        with_stat = c.exists()
        if with_stat:
            st = os.stat(c)
            inputs[(st.st_dev, st.st_ino)] = c
    for c, o in outs.items():
        if o.exists() or o.is_symlink():
            try:
                st = os.stat(o)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inputs:
                raise ValueError(
                    f"{o} would overwrite the input scan {inputs[(st.st_dev, st.st_ino)]}: "
                    "refusing; choose an output folder that is not the input folder"
                )
        check_output(c, o)  # also walks up to the first existing folder: a file there is refused
    return outs


class _CaseDataset(torch.utils.data.Dataset):
    """Reads, checks and preprocesses one case per item, in DataLoader workers; errors travel as data."""

    def __init__(
        self,
        cases: Sequence[Path],
        s: Settings,
        volume: int | None,
        budget: tuple[float | None, int | None],
        preview: bool,
    ) -> None:
        self.cases, self.s, self.volume, self.budget, self.preview = list(cases), s, volume, budget, preview

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.cases[i]
        try:
            info = inspect_input(path, self.s.in_chans, self.volume)
            check_budget(estimate(info, self.s), info, self.s, *self.budget)
            return {"path": path, **preprocess(path, self.s, self.volume, keep_original=self.preview)}
        except Exception as e:  # one bad file must not stop the study: reported, then skipped
            return {
                "path": path,
                "error": f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e),
            }


def _set_threads(n: int, worker_id: int) -> None:
    # DataLoader workers start with one thread; the reductions of the z-score and the resampling
    # then sum in another order than in this process, and a few voxels at a tie flip label. The
    # same thread count gives the same label maps as predict_nifti.
    torch.set_num_threads(n)


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def auto_workers() -> int:
    """Reading processes for a study: one when a core is left over by the model's threads, else 0.

    A reader only hides reading and preprocessing behind the model when it has a core of its own;
    on a machine whose every core runs the model's threads it takes cycles from the model
    instead (2 cores: 0.87× the throughput of reading in turn, benchmarks/predict_study.md).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 1 if cores > torch.get_num_threads() else 0


def _study_settings(settings: PredictSettings | None) -> StudySettings:
    """``settings`` as a :class:`StudySettings`: a plain :class:`PredictSettings` takes the study defaults."""
    if settings is None:
        return StudySettings()
    if isinstance(settings, StudySettings):
        return settings
    if isinstance(settings, PredictSettings):
        return StudySettings(**{f.name: getattr(settings, f.name) for f in fields(PredictSettings)})
    raise TypeError(f"settings must be a StudySettings, got {type(settings).__name__}")


def predict_study(
    model: nn.Module,
    source: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    settings: StudySettings | PredictSettings | None = None,
    *,
    progress: bool = True,
    on_case: Callable[[Path, Prediction | None, str | None], None] | None = None,
) -> StudyResult:
    """Segment every scan of a folder, datalist or glob into ``out_dir`` (same file names).

    A DataLoader with ``settings.num_workers`` processes reads and preprocesses the next volumes
    while the model runs. Outputs that exist are skipped (a rerun resumes). A file that fails is
    reported in :attr:`StudyResult.failed` and the study goes on. Under ``torchrun``
    (``RANK``/``WORLD_SIZE``) process ``r`` takes cases ``r, r + W, …`` and writes them itself.

    Args:
        model: a model from :func:`zoo.create`.
        source: a folder, a datalist JSON, a glob pattern, or a list of paths.
        out_dir: the output folder (created).
        settings: each case's settings as :func:`zoo.predict.predict_nifti` takes them, the
            reading processes and the rank (:class:`StudySettings`; a plain
            :class:`zoo.predict.PredictSettings` or None takes the study's defaults).
        progress: progress bar (cases).
        on_case: called after each case with ``(path, prediction or None, error or None)``.

    Returns:
        A :class:`StudyResult` of this process's cases.

    Raises:
        ValueError: settings, weights or outputs refused before any case runs.
    """
    from torch.utils.data import DataLoader

    asked = _study_settings(settings)
    if asked.device is not None:  # a device that is not there: refused before any case is listed
        resolve_precision(asked.precision, resolve_device(asked.device))
    s = _checked_settings(model, asked)
    num_workers = asked.num_workers
    if num_workers is None:
        num_workers = auto_workers()
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (reading processes), found {num_workers!r}")
    out_dir = Path(out_dir)
    cases = list_cases(source)
    outs = _study_outputs(cases, out_dir)
    env_rank, env_world = _rank()
    r = asked.rank if asked.rank is not None else env_rank
    w = asked.world_size if asked.world_size is not None else env_world
    mine = cases[r::w]
    result = StudyResult(cases=len(mine))
    todo = []
    for c in mine:
        if outs[c].exists():
            result.skipped.append(c)
        else:
            todo.append(c)
    if result.skipped:
        log.info("rank %d: %d case(s) already written, skipped", r, len(result.skipped))
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = _CaseDataset(todo, s, asked.volume, (asked.max_memory_gb, asked.max_windows), asked.preview)
    loader = DataLoader(
        ds,
        batch_size=1,
        collate_fn=_first,
        num_workers=num_workers,
        prefetch_factor=1 if num_workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(_set_threads, torch.get_num_threads()),
        # A forked child that starts its own OpenMP pool after the parent's can hang: spawn.
        multiprocessing_context="spawn" if num_workers and torch.get_num_threads() > 1 else None,
    )
    bar = _progress(len(todo), progress, r, w)
    where = place(model, asked)
    model.eval()
    for case in loader:
        path = case["path"]
        err = case.get("error")
        pred = None
        if err is None:
            try:
                pred = _run_case(model, case, s, outs[path], False, asked.preview, where)
            except (ValueError, RuntimeError, OSError) as e:
                err = f"{type(e).__name__}: {e}".replace("\n", " ")
        if err is not None:
            result.failed[str(path)] = err
            log.error("%s: skipped: %s", path, err)
        else:
            result.written.append(pred)
        if on_case is not None:
            on_case(path, pred, err)
        bar.update(1)
        del case
    bar.close()
    return result


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool, rank: int, world: int) -> Any:
    if not show or total == 0:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="case", desc=f"rank {rank}/{world}" if world > 1 else "predict", position=rank
    )
