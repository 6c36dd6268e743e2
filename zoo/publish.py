"""Publish weights to the Hugging Face Hub: a registered tag (``publish``) or a run folder (``publish_run``).

A published folder holds exactly ``model.safetensors``, ``config.json`` (what
``zoo.create("hf-hub:ORG/NAME")`` needs: model name and arguments, preprocessing, labels, the
provenance and licence of what the weights started from) and ``README.md`` (the card). It is
written into a new temporary sibling of ``--out``, uploaded from there with exactly those
files allowed, and renamed into place only when complete: a failure at any point leaves
nothing behind. An existing non-empty ``--out`` is refused, so nothing that happens to lie
in it (a ``.env``, notes) can ever be uploaded.

Licences follow content (``zoo.provenance``): a run is refused without
``permission_obtained`` when what it started from, identified by the sha256 that the run
recorded (or by its tag), is registered as not redistributable, whatever the file was called.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo._registry import ModelSpec, resolve
from zoo.hub import fetch_weights, file_digest

__all__ = ["PublishError", "StartingPoint", "publish", "publish_run", "run_starting_point", "PUBLISHED_FILES"]

PUBLISHED_FILES = ("model.safetensors", "config.json", "README.md")
_PERMISSION = "Pass permission_obtained=True (CLI: --permission-obtained) only if the rights holder agreed."


class PublishError(RuntimeError):
    """Publishing failed; nothing was left in the output folder."""


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A new temporary sibling of ``out`` to write into; renamed to ``out`` when the block succeeds."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; publish writes a new folder")
    if out.is_dir() and any(out.iterdir()):
        found = sorted(p.name for p in out.iterdir())[:8]
        raise ValueError(
            f"--out {out} already holds files ({', '.join(found)}); publish only writes a new or empty "
            "folder, so that nothing else that lies there is uploaded"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty, checked above; fails (and cleans up) if something appeared meanwhile
        os.rename(tmp, out)
    except BaseException as e:  # Ctrl-C included: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, ValueError | PermissionError | PublishError) or not isinstance(e, Exception):
            raise
        raise PublishError(f"could not write {out}: {type(e).__name__}: {e}; nothing was written") from e


def _upload(folder: Path, repo_id: str, revision: str | None, files: list[str], private: bool = False) -> str:
    """Create ``repo_id`` if needed (``private``: a private one; an existing one keeps its visibility)
    and upload exactly ``files`` of ``folder``; returns the commit id."""
    from huggingface_hub import HfApi

    from zoo._version import __version__

    api = HfApi(
        endpoint=os.environ.get("HF_ENDPOINT") or None, library_name="medzoo", library_version=__version__
    )
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            allow_patterns=files,  # exact names: fnmatch without wildcards matches only themselves
            commit_message=f"Upload {', '.join(files)} with medzoo {__version__}",
        )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PublishError(f"upload to {repo_id} failed: {first}; nothing was written locally") from e
    return str(getattr(info, "oid", "") or "")


def _finish(
    folder: Path,
    repo_id: str,
    revision: str | None,
    dry_run: bool,
    extra: tuple[str, ...] = (),
    private: bool = False,
) -> None:
    """Check the folder holds exactly the files to publish, then upload them unless ``dry_run``."""
    files = sorted(p.name for p in folder.iterdir())
    expected = sorted((*PUBLISHED_FILES, *extra))
    if files != expected:  # a bug here must never turn into an upload of something else
        raise PublishError(f"the folder to publish holds {files}, expected exactly {expected}")
    if not dry_run:
        _upload(folder, repo_id, revision, expected, private)


# A local path in any spelling, alone or inside a sentence: a file URI; a path from the root, the
# home folder (``~``, ``~user``), the current or a parent folder (``./``, ``../``), a drive letter
# (``C:\\``, ``C:/``) or a share (``\\\\host\\``). Not inside a word or a URL (``https://h/p``,
# ``org/name``, ``hf-hub:org/name``), where the character before it is a letter, ``:`` or ``/``.
_LOCAL_PATH = re.compile(
    r"file:/[^\s'\"<>`()\[\]]*"
    r"|(?<![\w.~:/\\-])(?:~[\w.-]*|\.\.?|[A-Za-z]:)?[/\\][^\s'\"<>`()\[\]]+"
)


def _file_name(match: re.Match[str]) -> str:
    text = match.group(0)
    core = text.rstrip(",;:!?")
    if core.endswith(".") and not core.endswith(".."):  # the end of a sentence, not of the path
        core = core[:-1]
    parts = [p for p in re.split(r"[/\\]+", core.removeprefix("file:")) if p]
    tail = parts[-1] if parts else ""
    name = tail if tail and tail not in (".", "..") and not tail.startswith("~") and ":" not in tail else ""
    return (name or "<local path>") + text[len(core) :]


def _public(value: Any) -> Any:
    """``value`` with every local path, in any spelling and inside any sentence, reduced to its
    last component: the one scrubber of everything published (config.json, the card)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_public(v) for v in value]
    if isinstance(value, str):
        return _LOCAL_PATH.sub(_file_name, value)
    return value


@dataclass(frozen=True)
class StartingPoint:
    """What a run started from, established by content where possible."""

    text: str  # for the card
    record: dict[str, Any] | None  # written to the published config.json as "init"
    registered: str | None  # "name.tag" of the registered weights it is, if any
    license: str | None
    redistributable: bool | None  # None: unknown
    base_model: str | None  # Hub repository id it derives from, if any
    known: bool  # False: the run named a file that can no longer be identified


def _registered(name_tag: str) -> tuple[str, str, bool, str | None, str | None] | None:
    """``(id, licence, redistributable, hub id, upstream digest)`` of a registered ``name.tag``, or None."""
    try:
        spec, tag = resolve(name_tag)
    except ValueError:
        return None
    if tag is None:
        return None
    ws = spec.weight(tag)
    return f"{spec.name}.{tag}", ws.license, ws.redistributable, ws.hf_hub_id, ws.upstream_digest


def run_starting_point(cfg: dict[str, Any], run: Path) -> StartingPoint:
    """What a run started from, in the card's words; the facts are :func:`zoo.provenance.read_init`'s.

    Args:
        cfg: the run's ``config.json``; its ``init`` as :func:`zoo.runconfig.migrate` reads it (a
            load record, ``name.tag``, a path, or None: older shapes are the migration's business).
        run: the run folder (a relative init path is looked up from it too).
    """
    from zoo.provenance import read_init
    from zoo.runconfig import migrate

    init = migrate(dict(cfg), str(run / "config.json")).get("init")
    start = read_init(init, cfg.get("model_name"), run)
    sha, record = start.sha256, start.record
    reg = _registered(start.registered.id) if start.registered else None
    if start.form == "none":
        return StartingPoint("random initialisation.", None, None, None, None, None, True)
    if start.form == "gone":
        text = f"a local checkpoint `{record['id']}` that is no longer there to identify."
        return StartingPoint(text, record, None, None, None, None, False)
    if start.form == "hf-hub":
        hub = str(record.get("id", "")).removeprefix("hf-hub:")
        repo_id, _, commit = hub.partition("@")
        text = f"the Hub repository `{repo_id}`" + (f" at commit `{commit}`" if commit else "")
        text += f" (`hf-hub:{hub}`), file sha256 `{sha}`." if sha else f" (`hf-hub:{hub}`)."
        if reg:
            text += f" Its weights are the registered `{reg[0]}`."
        registered = reg[0] if reg else None
        return StartingPoint(text, record, registered, start.license, start.redistributable, repo_id, True)
    if reg is None:
        text = f"a local checkpoint with sha256 `{sha}`." if sha else "a local checkpoint."
        return StartingPoint(text, record, None, None, None, None, True)
    if start.form == "name":
        text = f"`{reg[0]}` (registered weights)."
    elif record and record.get("source") == "registry":
        file = f", file sha256 `{sha}`" if sha else ""
        text = f"`{reg[0]}` (registered weights{file})."
    else:
        how = (
            f", identified by its sha256 `{sha}` ({start.registered.matched})"
            if sha and start.by_digest
            else ""
        )
        text = f"a local checkpoint with sha256 `{sha}`: the registered weights `{reg[0]}`{how}."
    record = record or {"source": "registry", "id": reg[0], "tag": reg[0].split(".", 1)[1]}
    record = {**record, "identified_as": reg[0], "upstream_digest": reg[4]}
    return StartingPoint(text, record, reg[0], start.license, start.redistributable, reg[3], True)


def _derived_from(start: StartingPoint, mine: Any, spec: ModelSpec) -> str | None:
    """The short provenance field: a tag of this model (as before), else a full id or a Hub repository."""
    ident = start.registered or start.base_model or (mine.id if mine else None)
    if ident and ident.startswith(f"{spec.name}.") and ident.split(".", 1)[1] in spec.tags:
        return ident.split(".", 1)[1]  # kept as the tag: what zoo finetune's consumers read
    return ident


def _check_licence(start: StartingPoint, mine: Any, run: Path, permission_obtained: bool) -> None:
    """Refuse weights derived from (or being) non-redistributable ones, or from what cannot be identified."""
    if permission_obtained:
        return
    if mine is not None and not mine.redistributable:
        raise PermissionError(
            f"{run}/model.safetensors has the sha256 of the registered weights {mine.id}, whose licence "
            f"{mine.license!r} does not allow redistribution. {_PERMISSION}"
        )
    if start.redistributable is False:
        what = start.registered or (start.record or {}).get("id") or "its starting checkpoint"
        raise PermissionError(
            f"{run} was trained from {what}, whose licence {start.license!r} does not allow redistribution, "
            f"and weights derived from it carry that restriction. {_PERMISSION}"
        )
    if not start.known:
        raise PermissionError(
            f"{run} started from {(start.record or {}).get('id')}, which is no longer there and whose sha256 "
            f"the run did not record, so its licence cannot be checked. {_PERMISSION}"
        )


def _check_chain(chain: Any, run: Path, permission_obtained: bool) -> None:
    """Refuse a run any of whose ancestors may not be redistributed, or cannot be checked."""
    if permission_obtained:
        return
    for link in chain:
        if link.redistributable is False:
            raise PermissionError(
                f"{run} descends from {link.id} (through {' → '.join(x.id for x in chain)}), whose licence "
                f"{link.license!r} does not allow redistribution, and weights derived from it carry that "
                f"restriction. {_PERMISSION}"
            )
        if link.source == "missing":
            raise PermissionError(
                f"{run} descends from {link.id}, which is no longer there and whose sha256 the run did not "
                f"record, so its licence cannot be checked. {_PERMISSION}"
            )


def publish_run(
    run_dir: str | Path,
    repo_id: str,
    out_dir: str | Path,
    *,
    dry_run: bool = False,
    permission_obtained: bool = False,
    revision: str | None = None,
    license: str | None = None,
    private: bool = False,
) -> Path:
    """Write (and upload) a Hub folder for a ``zoo finetune`` / ``zoo pretrain`` run.

    The run's checkpoint is first loaded strictly into its architecture, so a folder that
    would not load is never written. Its ``model.safetensors`` is uploaded byte for byte; that
    of a run saved before runs left out derived buffers is uploaded without them, and the
    published ``config.json`` records the uploaded file's sha256. Weights that started from (or
    are) registered weights whose licence does not allow redistribution are refused unless
    ``permission_obtained``.
    Absolute paths in the run's config (its datalist, its volumes) are reduced to file names.
    The card (:func:`zoo.cards.render_run_card`) is about the run; its curves, drawn from the
    run's ``log.jsonl``, are published beside it as ``loss.png`` and ``val_dice.png``: the Hub
    shows images that lie in the repository, and each is named in the exact list uploaded.

    Args:
        run_dir: the run folder (``model.safetensors`` + ``config.json``).
        repo_id: target Hub repository (``ORG/NAME``).
        out_dir: folder to write (new or empty); uploaded unless ``dry_run``.
        permission_obtained: the rights holder of the starting weights agreed to redistribution.
        revision: Hub branch to commit to (default: the default branch).
        license: licence of the published weights; default: that of its chain (what it started
            from). A run from random weights, or from weights of unknown licence, has none until
            this names one: it is refused without.

    Returns:
        The written folder.
    """
    from zoo._factory import create_from_plan
    from zoo.cards import RunFacts, is_hub_repo_id, render_run_card
    from zoo.provenance import identify_digest

    if not is_hub_repo_id(repo_id):
        raise ValueError(f"--repo must be a Hub repository id ORG/NAME, got {repo_id!r}")
    from zoo.plan import plan
    from zoo.provenance import chain_licence, identify_parts, lineage_of_config
    from zoo.runconfig import read_config

    run = Path(run_dir)
    cfg_path, ckpt = run / "config.json", run / "model.safetensors"
    if not (cfg_path.is_file() and ckpt.is_file()):
        raise FileNotFoundError(f"{run}: not a zoo run folder (needs model.safetensors and config.json)")
    checked = read_config(cfg_path, weights_bytes=ckpt.stat().st_size)  # every key, before anything else
    cfg = json.loads(cfg_path.read_text())
    spec: ModelSpec = checked.spec
    start = run_starting_point(cfg, run)
    chain = lineage_of_config(checked, run)
    own = file_digest(ckpt)
    mine = identify_digest(sha256=own, gitsha1=file_digest(ckpt, "gitsha1"))  # the run's file may be one
    if mine is None:  # or hold one's tensors unchanged (a frozen encoder), whatever its records say
        mine = identify_parts(ckpt, spec)
    _check_licence(start, mine, run, permission_obtained)
    _check_chain(chain, run, permission_obtained)
    chain_lic, chain_redis, _ = chain_licence(chain)
    licence = license or (mine.license if mine else None) or chain_lic or start.license
    if licence is None:
        what = "random weights" if not chain else f"{chain[-1].id}, whose licence is unknown"
        raise ValueError(
            f"{run} started from {what}: its weights have no licence until you name one with --license "
            "(e.g. apache-2.0, the project's); nothing was written"
        )
    model = create_from_plan(plan(run))  # strict: a broken run is refused here
    restricted = (
        start.redistributable is False
        or chain_redis is False
        or (mine is not None and not mine.redistributable)
    )
    out = Path(out_dir)
    with _staged(out) as tmp:
        published = _copy_weights(ckpt, own, model, tmp / "model.safetensors")
        config = _public(
            {
                **cfg,
                "library_name": "medzoo",
                "sha256": published,
                "init": start.record,
                "derived_from": _derived_from(start, mine, spec),
                "license": licence,
                # The licence's verdict, not this publisher's permission: that does not pass to derived runs.
                "redistributable": not restricted,
                "permission_obtained": permission_obtained,
                "lineage": [link.as_dict() for link in chain],
            }
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        log = _run_log(run)
        images = _draw_curves(run, tmp, config)
        facts = RunFacts(
            repo_id=repo_id,
            started_from=start.text,
            chain=tuple(chain),
            licence=licence,
            base_model=start.base_model or _hub_of(chain),
            num_params=sum(p.numel() for p in model.parameters()),
            validations=tuple(e["val"] for e in log if "val" in e),
            train_seconds=sum(e["seconds"] for e in log if "seconds" in e) or None,
            images=images,
        )
        (tmp / "README.md").write_text(_public(render_run_card(spec, config, facts)))
        _finish(tmp, repo_id, revision, dry_run, images, private=private)
    return out


def _copy_weights(ckpt: Path, own: str, model: Any, dest: Path) -> str:
    """Copy a run's weights file (sha256 ``own``) to ``dest``; returns the sha256 of ``dest``.

    A run's file is copied byte for byte. One saved before runs left out derived buffers
    (:mod:`zoo.layers.derived`) is written again without them.
    """
    import hashlib

    from safetensors import safe_open

    from zoo.layers.derived import derived_buffer_keys

    with safe_open(str(ckpt), framework="pt") as f:
        stored = derived_buffer_keys(model) & set(f.keys())
        metadata = f.metadata()
    if not stored:
        shutil.copyfile(ckpt, dest)
        if file_digest(dest) != own:
            raise PublishError(f"{ckpt} changed while it was being published")
        return own
    from safetensors.torch import load, save

    data = ckpt.read_bytes()
    if hashlib.sha256(data).hexdigest() != own:
        raise PublishError(f"{ckpt} changed while it was being published")
    # Stripped rather than kept: every published file is lean whatever the run's age; config.json
    # records the sha256 of the uploaded file, the digest by which a download is identified.
    kept = {k: v for k, v in load(data).items() if k not in stored}
    lean = save(kept, metadata=metadata)
    dest.write_bytes(lean)
    return hashlib.sha256(lean).hexdigest()


def _run_log(run: Path) -> list[dict[str, Any]]:
    from zoo.train_state import read_log

    try:
        return read_log(run)
    except (OSError, ValueError):
        return []


def _hub_of(chain: Any) -> str | None:
    """The Hub repository of the newest registered weights in the chain, if they are published there."""
    for link in reversed(tuple(chain)):
        reg = _registered(link.id)
        if reg is not None:
            return reg[3]
    return None


# The curves published beside a run's card; nothing else ever is (see _finish).
CURVE_FILES = ("loss.png", "val_dice.png")


def _draw_curves(run: Path, folder: Path, config: dict[str, Any]) -> tuple[str, ...]:
    """Draw the run's curves from its ``log.jsonl`` into ``folder``; the names drawn (none: no matplotlib)."""
    from zoo.plots import plot_training_curves

    if not (run / "log.jsonl").is_file():
        return ()
    names = {int(k): str(v) for k, v in (config.get("labels") or {}).items()}
    try:
        drawn = plot_training_curves(run / "log.jsonl", folder, names=names)
    except (RuntimeError, ValueError, OSError):  # no matplotlib, or a log that cannot be read
        return ()
    return tuple(p.name for p in drawn if p.name in CURVE_FILES)


def _is_the_tag(path: Path, spec: ModelSpec, tag: str) -> bool:
    """Whether a checkpoint is the registered ``spec.tag`` file, by content (never by its name).

    Its upstream digest, its Hub sha256, a cached conversion, or its converted tensors byte for
    byte. Another registered tag is refused outright.

    Raises:
        ValueError: the file is other registered weights.
    """
    from zoo.provenance import identify_file, identify_parts

    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    sha, origin = identify_file(path)
    if origin is None:
        origin = identify_parts(path, spec)
    if origin is not None and origin.id != f"{spec.name}.{tag}":
        raise ValueError(
            f"--checkpoint {path.name} (sha256 {sha}) is the registered {origin.id}, not {spec.name}.{tag}"
        )
    return origin is not None


def _check_shape_of_tag(sd: dict[str, Any], path: Path, spec: ModelSpec, tag: str) -> None:
    """An unidentified file published as a tag must at least hold what the tag holds, and no more."""
    ws = spec.weight(tag)
    if ws.covers == "full":
        return
    prefixes = tuple(spec.partial_components.get(ws.covers, ()))
    outside = sorted(k for k in sd if not k.startswith(prefixes))
    if outside:
        raise ValueError(
            f"--checkpoint {path.name} is not {spec.name}.{tag}: that tag holds the {ws.covers} only, "
            f"the file also holds {len(outside)} other tensor(s) ({', '.join(outside[:3])} …); publish a "
            "model of your own from a run folder (zoo publish RUN)"
        )


def publish(
    name: str,
    repo_id: str,
    out_dir: str | Path,
    *,
    dry_run: bool = False,
    checkpoint_path: str | Path | None = None,
    permission_obtained: bool = False,
    revision: str | None = None,
    private: bool = False,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for ``name.tag`` and upload them.

    Weights whose licence does not allow redistribution are refused unless
    ``permission_obtained`` says the rights holder agreed.

    Args:
        name: ``name.tag`` (or an alias that names a tag).
        repo_id: target Hub repository (``ORG/NAME``).
        out_dir: folder to write (new or empty); uploaded unless ``dry_run``.
        checkpoint_path: publish this checkpoint (upstream format or safetensors)
            instead of fetching the registered one.
        revision: Hub branch to commit to (default: the default branch).

    Returns:
        The written folder.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from zoo.cards import is_hub_repo_id, render_card
    from zoo.convert import convert_checkpoint, read_checkpoint
    from zoo.layers.derived import without_derived

    if not is_hub_repo_id(repo_id):
        raise ValueError(f"--repo must be a Hub repository id ORG/NAME, got {repo_id!r}")
    spec, tag = resolve(name)
    if tag is None:
        raise ValueError(
            f"publish needs a weights tag: {name!r} names none (tags: {', '.join(spec.tags) or 'none'})"
        )
    ws = spec.weight(tag)
    if not ws.redistributable and not permission_obtained:
        raise PermissionError(
            f"{spec.name}.{tag} has licence {ws.license!r}, which does not allow redistribution. "
            + _PERMISSION
        )
    identified = True
    sd = None
    if checkpoint_path is not None:
        identified = _is_the_tag(Path(checkpoint_path), spec, tag)
        sd = convert_checkpoint(read_checkpoint(checkpoint_path), spec)
        if not identified:
            _check_shape_of_tag(sd, Path(checkpoint_path), spec, tag)
    source = fetch_weights(spec, ws) if sd is None else None
    out = Path(out_dir)
    with _staged(out) as tmp:
        metadata = None
        if sd is None:
            from safetensors import safe_open

            with safe_open(str(source), "pt") as f:
                metadata = f.metadata()
            sd = load_file(str(source))
        with torch.device("meta"):  # the names of the derived buffers, without building weights
            skeleton = spec.builder(**spec.model_args)
        kept = {k: v.contiguous() for k, v in without_derived(sd, skeleton).items()}  # loading rebuilds them
        save_file(kept, str(tmp / "model.safetensors"), metadata=metadata)
        config = {
            "library_name": "medzoo",
            "model_name": spec.name,
            "tag": tag,
            "family": spec.family,
            "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.model_args.items()},
            "in_chans": ws.in_chans,
            "num_classes": ws.num_classes,
            "img_size": list(ws.img_size) if ws.img_size else None,
            "covers": ws.covers,
            "preprocessing": dict(ws.preprocessing),
            "sliding_window": {
                k: list(v) if isinstance(v, tuple) else v for k, v in spec.sliding_window.items()
            },
            "license": ws.license,
            "redistributable": ws.redistributable,
            "permission_obtained": permission_obtained,
            # The tag's provenance only for the tag's own file; a copy that cannot be identified
            # is published as what the user says it is, without the upstream's URL and digest.
            "source_url": ws.url if identified else None,
            "source_digest": ws.upstream_digest if identified else None,
            "sha256": file_digest(tmp / "model.safetensors"),
        }
        (tmp / "config.json").write_text(json.dumps(_public(config), indent=2) + "\n")
        (tmp / "README.md").write_text(_public(render_card(spec, hub_tag=tag, hub_id=repo_id)))
        _finish(tmp, repo_id, revision, dry_run, private=private)
    return out
