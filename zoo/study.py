"""Segmentation of a whole study: a folder, a datalist or a glob of NIfTI scans into one output folder.

:func:`predict_study` runs each case as :func:`zoo.predict.predict_nifti` does, with the same
checks: a DataLoader reads and preprocesses the next volumes while the model runs, finished
outputs are skipped (a rerun resumes), a bad file is reported and skipped, and under ``torchrun``
each process takes its share of the cases (no collective: each writes its own files). Every output
is checked before the first case runs: none may be an input scan, two inputs may not share an
output name.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import os
import time
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

__all__ = [
    "StudySettings",
    "StudyResult",
    "auto_workers",
    "is_study",
    "list_cases",
    "study_cases",
    "is_done",
    "predict_study",
]


@dataclass(frozen=True)
class StudySettings(PredictSettings):
    """What the caller asks of a study: each case's :class:`zoo.predict.PredictSettings`, and more.

    Attributes:
        num_workers: reading processes (0: read in this process, no overlap); default
            :func:`auto_workers`.
        rank / world_size: override the ``torchrun`` environment (``RANK``/``WORLD_SIZE``).
        output_format: ``"same"`` (each label map in its scan's format: NRRD, MetaImage; NIfTI for
            NIfTI and DICOM series) or ``"nifti"``.
    """

    num_workers: int | None = None
    rank: int | None = None
    world_size: int | None = None
    output_format: str = "same"


@dataclass
class StudyResult:
    """What ``predict_study`` did: cases written, skipped (output already there), failed."""

    written: list[Prediction] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cases: int = 0


_NIFTI = (".nii", ".nii.gz")
_SCANS = (*_NIFTI, ".nrrd", ".nhdr", ".mha", ".mhd")  # DICOM series are folders: zoo.imageio.is_dicom_series


# One walk for every folder and glob: bounded in entries and time, and never into a folder twice
# (a link back to a parent would make it endless).
MAX_WALK_ENTRIES = 200_000
MAX_WALK_SECONDS = 60.0
MAX_DATALIST_BYTES = 64 << 20
_MAGIC = "*?["


def is_study(text: str | Path) -> bool:
    """Whether ``text`` names a study (a folder, a datalist ``.json``, a glob) rather than one scan.

    An existing file is a path even when its name holds ``[`` or ``*`` (``scan[1].nii.gz``).
    """
    p = Path(text)
    if p.is_dir():
        from zoo.imageio import is_dicom_series

        return not is_dicom_series(p)  # a folder of DICOM slices is one scan
    if p.is_file() or p.is_symlink():
        return p.suffix == ".json"
    return str(text).endswith(".json") or any(ch in str(text) for ch in _MAGIC)


def list_cases(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The input files of a study: a folder (its ``*.nii``/``*.nii.gz``), a datalist JSON, a glob.

    A datalist is a list of paths or ``{"image": path}`` entries, or a MONAI datalist whose
    ``testing`` (else ``validation`` and ``training``) entries give ``image``; relative paths are
    relative to the JSON file. A glob (``**`` included) is matched by one bounded walk.

    Raises:
        ValueError: nothing found, a datalist of another form, a walk past its bounds.
    """
    if isinstance(source, list | tuple):
        return [Path(p) for p in source]
    text = str(source)
    p = Path(text)
    if p.is_dir():
        files = _walk(p, ("*",), text)
        if not files:
            raise ValueError(
                f"{p}: expected scans in the folder (.nii, .nii.gz, .nrrd, .mha, DICOM series folders), "
                "found none"
            )
        return files
    if p.suffix == ".json" and p.is_file():
        return _datalist_cases(p)
    if p.is_file():  # an existing path is a path, whatever characters its name holds
        return [p]
    if any(ch in text for ch in _MAGIC):
        parts = p.parts
        i = next((k for k, part in enumerate(parts) if any(ch in part for ch in _MAGIC)), len(parts))
        files = _walk(Path(*parts[:i]) if i else Path("."), parts[i:], text)
        if not files:
            raise ValueError(f"{text}: the pattern matches no .nii or .nii.gz file")
        return files
    raise ValueError(f"{text}: expected a folder, a datalist .json or a glob pattern, found no such path")


def _datalist_cases(p: Path) -> list[Path]:
    with open(p, "rb") as f:  # bounded: a link to a huge file or a device is not read whole
        data = f.read(MAX_DATALIST_BYTES + 1)
    if len(data) > MAX_DATALIST_BYTES:
        raise ValueError(f"{p}: a datalist over the {MAX_DATALIST_BYTES:,}-byte bound; refused")
    try:
        dl = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a valid JSON datalist ({type(e).__name__} at {_where(e)})") from None
    if isinstance(dl, dict):
        entries = dl.get("testing") or [*(dl.get("validation") or []), *(dl.get("training") or [])]
    else:
        entries = dl
    paths = []
    for e in entries if isinstance(entries, list) else []:
        image = e.get("image") if isinstance(e, dict) else e
        if isinstance(image, list) and image and all(isinstance(i, str) for i in image):
            # One file per channel (BraTS style), stacked in the order given.
            paths.append(tuple(Path(i) if Path(i).is_absolute() else p.parent / i for i in image))
        elif isinstance(image, str):
            paths.append(Path(image) if Path(image).is_absolute() else p.parent / image)
    if not paths:
        raise ValueError(
            f"{p}: expected a list of image paths or a MONAI datalist with 'testing' entries, found none"
        )
    return paths


def _where(e: Exception) -> str:
    line, col = getattr(e, "lineno", None), getattr(e, "colno", None)
    return f"line {line}, column {col}" if line is not None else f"byte {getattr(e, 'start', '?')}"


def _step(comps: Sequence[str], states: frozenset[int], name: str) -> frozenset[int]:
    """The pattern positions reached after matching one more path component ``name``."""
    out: set[int] = set()
    for i in states:
        if i == len(comps):
            continue
        if comps[i] == "**":
            if not name.startswith("."):
                out.add(i)
        elif (not name.startswith(".") or comps[i].startswith(".")) and fnmatch.fnmatchcase(name, comps[i]):
            out.add(i + 1)
    return _close(comps, out)


def _close(comps: Sequence[str], states: set[int]) -> frozenset[int]:
    """``states`` with every ``**`` also matching nothing."""
    todo, done = list(states), set(states)
    while todo:
        i = todo.pop()
        if i < len(comps) and comps[i] == "**" and i + 1 not in done:
            done.add(i + 1)
            todo.append(i + 1)
    return frozenset(done)


def _walk(root: Path, comps: Sequence[str], what: str) -> list[Path]:
    """The NIfTI files under ``root`` matching the path components ``comps`` (``*``, ``?``, ``[…]``,
    ``**``), in one walk that enters each folder once, within ``MAX_WALK_ENTRIES`` and
    ``MAX_WALK_SECONDS``."""
    start, entries = time.monotonic(), 0
    seen: set[tuple[int, int]] = set()
    found: set[Path] = set()
    stack = [(root, _close(comps, {0}))]
    while stack:
        folder, states = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # a link into a folder already walked: once is enough
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            listing = os.scandir(folder)
        except OSError:
            continue
        with listing:
            for entry in listing:
                entries += 1
                if entries > MAX_WALK_ENTRIES or time.monotonic() - start > MAX_WALK_SECONDS:
                    raise ValueError(
                        f"{what}: more than {min(entries, MAX_WALK_ENTRIES):,} entries or "
                        f"{MAX_WALK_SECONDS:g} s of walking (a link loop or a huge tree); refused: "
                        "narrow the pattern or list the scans in a datalist"
                    )
                nxt = _step(comps, states, entry.name)
                if not nxt:
                    continue
                path = folder / entry.name if folder != Path(".") else Path(entry.name)
                try:
                    if len(comps) in nxt and entry.name.lower().endswith(_SCANS) and entry.is_file():
                        found.add(path)
                    elif len(comps) in nxt and entry.is_dir() and _dicom(path):
                        found.add(path)  # a DICOM series: one scan, not a folder to walk
                    elif any(i < len(comps) for i in nxt) and entry.is_dir():
                        stack.append((path, nxt))
                except OSError:
                    continue
    return sorted(found)


def _dicom(path: Path) -> bool:
    from zoo.imageio import is_dicom_series

    return is_dicom_series(path)


def _first(case: Any) -> Path:
    """The file that names a case (the first of a case of one file per channel)."""
    return Path(case[0]) if isinstance(case, tuple | list) else Path(case)


def _output_name(case: Any, nifti: bool = False) -> str:
    """A case's label-map name: its scan's name in its own format (NRRD, MetaImage), else NIfTI."""
    from zoo.imageio import output_suffix

    path = _first(case)
    stem = path.name
    for suffix in (".gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        stem = stem.removesuffix(suffix)
    return stem + output_suffix(path, nifti=nifti)


def _record_path(out: Path) -> Path:
    """The sidecar record of a study output: what was written (size, sha256), beside it, hidden."""
    return out.with_name(f".{out.name}.medzoo.json")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_record(out: Path, case: Any) -> None:
    from zoo._files import write_bytes_atomically

    record = {
        "output": out.name,
        "input": _first(case).name,
        "size": out.stat().st_size,
        "sha256": _digest(out),
    }
    write_bytes_atomically(_record_path(out), json.dumps(record) + "\n")


def _read_record(out: Path) -> dict[str, Any] | None:
    try:
        path = _record_path(out)
        if path.stat().st_size > 4096:
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("output") == out.name else None


def is_done(out: Path) -> bool:
    """Whether ``out`` is a finished study output: its sidecar record's size and sha256 match it (a
    truncated or replaced output is not done, and is written again)."""
    record = _read_record(out)
    try:
        return (
            record is not None
            and not out.is_symlink()
            and out.stat().st_size == record.get("size")
            and _digest(out) == record.get("sha256")
        )
    except OSError:
        return False


def study_cases(
    source: str | Path | Sequence[str | Path], out_dir: str | Path, nifti: bool = False
) -> dict[Any, Path]:
    """The cases of a study and the output of each, checked before any case runs.

    Files in ``out_dir`` that carry a sidecar record are this study's outputs, never inputs (a glob
    over a tree that holds ``out_dir`` finds them on a rerun).

    Raises:
        ValueError: see :func:`list_cases`; an output folder named like a file, a file, one that
            holds input scans; two inputs with one output name; an output that is an input.
    """
    out_dir = Path(out_dir)
    cases = list_cases(source)
    if out_dir.is_dir():
        here = os.stat(out_dir)
        cases = [
            c for c in cases if not (_read_record(_first(c)) is not None and _in_folder(_first(c), here))
        ]
        if not cases:
            raise ValueError(f"{source}: every file found is an output of this study in {out_dir}; no input")
    return _study_outputs(cases, out_dir, nifti)


def _in_folder(path: Path, folder: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.stat(path.parent), folder)
    except OSError:
        return False


def _study_outputs(cases: Sequence[Any], out_dir: Path, nifti: bool = False) -> dict[Any, Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: expected an output folder, found a file")
    if out_dir.name.lower().endswith(_SCANS) and not out_dir.is_dir():
        raise ValueError(
            f"{out_dir}: a study writes a folder of label maps, found an output named like a file; "
            "name a folder (or give one input scan)"
        )
    if out_dir.exists():
        here = os.stat(out_dir)
        for c in map(_first, cases):
            if c.exists() and os.path.samestat(os.stat(c.parent), here):
                raise ValueError(
                    f"{out_dir} holds the input scans (e.g. {c.name}): refusing to write label maps among "
                    "them, where they could overwrite a scan or be read as one; choose another output folder"
                )
    outs: dict[Path, Path] = {}
    seen: dict[str, Path] = {}
    for c in cases:
        name = _output_name(c, nifti)
        if name in seen:
            raise ValueError(f"{c} and {seen[name]} would both be written as {out_dir / name}; rename one")
        seen[name] = c
        outs[c] = out_dir / name
    inputs = {}
    for case in cases:
        for c in case if isinstance(case, tuple | list) else (case,):
            if Path(c).exists():
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
        check_output(_first(c), o)  # also walks up to the first existing folder: a file there is refused
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


def _one_item(batch: list[Any]) -> Any:
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
    while the model runs. Each output gets a hidden sidecar record (its size and sha256); an output
    whose record matches is skipped (a rerun resumes), any other is written again. A file that fails is
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
    outs = study_cases(source, out_dir, nifti=asked.output_format == "nifti")
    cases = list(outs)
    env_rank, env_world = _rank()
    r = asked.rank if asked.rank is not None else env_rank
    w = asked.world_size if asked.world_size is not None else env_world
    mine = cases[r::w]
    result = StudyResult(cases=len(mine))
    todo = []
    for c in mine:
        if is_done(outs[c]):
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
        collate_fn=_one_item,
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
                _write_record(outs[path], path)
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
