"""Weights: resolve → download → verify → convert → cache, and publish to the Hub.

This module knows nothing about any architecture: it moves files, checks digests and
hands upstream checkpoints to the family converter named by the :class:`ModelSpec`.

Resolution for a weights tag (``zoo.create`` handles ``checkpoint_path`` before this):

1. The Hugging Face Hub, when the tag names a repository: ``hf_hub_download`` at the
   pinned revision, through its own cache; ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and
   ``HF_HUB_OFFLINE`` are read at call time. The sha256 of the file is checked on
   every load when the registry pins it.
2. The upstream URL: downloaded once under a lock, checked against the published digest
   (git blob SHA-1 or sha256), converted to safetensors and cached under
   ``$MEDZOO_CACHE`` (default ``~/.cache/medzoo``) with a sidecar recording the
   converted file's sha256, which is checked again on every load.
   ``MEDZOO_UPSTREAM_ENDPOINT`` replaces the scheme and host of upstream URLs (a mirror).

A file that fails its digest is deleted, never used; downloads go to a temporary file in
the destination folder and are renamed into place only once complete and verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from filelock import FileLock

from zoo._registry import ModelSpec, WeightSpec, resolve

log = logging.getLogger("zoo.hub")

__all__ = [
    "WeightsUnavailableError",
    "DigestMismatchError",
    "cache_dir",
    "fetch_weights",
    "file_digest",
    "publish",
]

_CHUNK = 1 << 20


class WeightsUnavailableError(RuntimeError):
    """No source could provide the weights (offline and not cached, or every source failed)."""


class DigestMismatchError(ValueError):
    """A file whose digest differs from the one the registry pins."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``MEDZOO_OFFLINE``) set: use caches only."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("MEDZOO_OFFLINE"))


def cache_dir() -> Path:
    """Root of medzoo's own cache (converted upstream checkpoints).

    ``$MEDZOO_CACHE``, else ``$XDG_CACHE_HOME/medzoo``, else ``~/.cache/medzoo`` (the XDG default).
    """
    if os.environ.get("MEDZOO_CACHE"):
        return Path(os.environ["MEDZOO_CACHE"])
    # XDG says a relative XDG_CACHE_HOME is invalid and must be ignored.
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "medzoo"


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file: ``sha256``, or ``gitsha1`` (git's blob SHA-1)."""
    path = Path(path)
    if algo == "sha256":
        h = hashlib.sha256()
    elif algo == "gitsha1":
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"unknown digest algorithm {algo!r} (sha256 or gitsha1)")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(path: Path, expected: str, what: str) -> None:
    algo, _, want = expected.partition(":")
    got = file_digest(path, algo)
    if got != want.lower():
        raise DigestMismatchError(f"{what}: {algo} digest {got} does not match the pinned {want}")


# ---------------------------------------------------------------------------- Hub


def _from_hub(ws: WeightSpec) -> Path:
    from huggingface_hub import hf_hub_download

    kwargs: dict[str, Any] = dict(
        repo_id=ws.hf_hub_id,
        filename=ws.hf_filename,
        revision=ws.hf_revision,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
        cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        local_files_only=is_offline(),
    )
    path = Path(hf_hub_download(**kwargs))
    if ws.sha256 is None:
        return path
    try:
        _check_digest(path, f"sha256:{ws.sha256}", f"{ws.hf_hub_id}/{ws.hf_filename}")
        return path
    except DigestMismatchError as e:
        _remove_hub_file(path)
        if is_offline():
            raise DigestMismatchError(
                f"{e}; the cached copy was removed and offline mode forbids a new download"
            ) from e
        log.warning("%s; removed it, downloading again", e)
    path = Path(hf_hub_download(**kwargs, force_download=True))
    try:
        _check_digest(path, f"sha256:{ws.sha256}", f"{ws.hf_hub_id}/{ws.hf_filename}")
    except DigestMismatchError:
        _remove_hub_file(path)
        raise
    return path


def _remove_hub_file(path: Path) -> None:
    """Delete a cached Hub file: the snapshot link and the blob it points at."""
    blob = path.resolve()
    for p in {path, blob}:
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------- upstream


def upstream_url(url: str) -> str:
    """``url``, with scheme and host replaced by ``MEDZOO_UPSTREAM_ENDPOINT`` when set."""
    mirror = os.environ.get("MEDZOO_UPSTREAM_ENDPOINT")
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    base = mirror.rstrip("/")
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def _download(url: str, dest_dir: Path, progress: bool) -> Path:
    """Stream ``url`` to a temporary file in ``dest_dir``; error on a short read."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, suffix=".part")
    tmp = Path(tmp_name)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "medzoo"})
        with urllib.request.urlopen(req, timeout=60) as resp, os.fdopen(fd, "wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total is not None else None
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False)
            received = 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if total is not None and received != total:
            raise WeightsUnavailableError(
                f"truncated download from {url}: received {received} of {total} bytes"
            )
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def converted_path(spec: ModelSpec, ws: WeightSpec) -> Path:
    """Where the converted safetensors of an upstream checkpoint is cached."""
    return cache_dir() / "converted" / f"{spec.name}.{ws.tag}.safetensors"


def _cached_converted(target: Path) -> Path | None:
    """The cached converted file if present and intact; a bad one is removed."""
    sidecar = target.with_suffix(".json")
    if not target.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        _check_digest(target, f"sha256:{meta['sha256']}", f"cached {target.name}")
        return target
    except (OSError, ValueError, KeyError) as e:
        log.warning("cache file %s is not valid (%s); removing it", target, e)
        target.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return None


def _from_upstream(
    spec: ModelSpec,
    ws: WeightSpec,
    progress: bool,
) -> Path:
    from safetensors.torch import save_file

    from zoo.convert import convert_checkpoint, read_checkpoint

    target = converted_path(spec, ws)
    if (hit := _cached_converted(target)) is not None:
        return hit
    if is_offline():
        raise WeightsUnavailableError(
            f"{spec.name}.{ws.tag} is not in the cache ({target}) and offline mode is on "
            "(HF_HUB_OFFLINE/MEDZOO_OFFLINE). Download it once with `zoo download "
            f"{spec.name}.{ws.tag}` while online, or pass checkpoint_path= to a local file."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        # Another process may have finished while this one waited for the lock.
        if (hit := _cached_converted(target)) is not None:
            return hit
        url = upstream_url(ws.url)
        log.info("downloading %s.%s from %s", spec.name, ws.tag, url)
        try:
            raw = _download(url, target.parent, progress)
        except urllib.error.HTTPError as e:
            raise WeightsUnavailableError(f"upstream {url} answered HTTP {e.code}") from e
        except urllib.error.URLError as e:
            raise WeightsUnavailableError(f"cannot reach upstream {url}: {e.reason}") from e
        try:
            if ws.upstream_digest:
                _check_digest(raw, ws.upstream_digest, f"upstream file {url}")
            else:
                log.warning(
                    "%s.%s: upstream publishes no digest; downloaded file has sha256 %s "
                    "(pin it in the registry as upstream_digest='sha256:%s')",
                    spec.name,
                    ws.tag,
                    file_digest(raw),
                    file_digest(raw),
                )
            sd = convert_checkpoint(read_checkpoint(raw), spec)
            fd, tmp_st = tempfile.mkstemp(dir=target.parent, suffix=".safetensors.part")
            os.close(fd)
            try:
                save_file(
                    {k: v.contiguous() for k, v in sd.items()}, tmp_st, metadata={"source": ws.url or ""}
                )
                digest = file_digest(tmp_st)
                os.replace(tmp_st, target)
            finally:
                Path(tmp_st).unlink(missing_ok=True)
            sidecar = {
                "name": spec.name,
                "tag": ws.tag,
                "sha256": digest,
                "source_url": ws.url,
                "source_digest": ws.upstream_digest or f"sha256:{file_digest(raw)}",
            }
            _atomic_write_text(target.with_suffix(".json"), json.dumps(sidecar, indent=1))
        finally:
            raw.unlink(missing_ok=True)
    log.info("cached %s", target)
    return target


# --------------------------------------------------------------------- resolver


def fetch_weights(spec: ModelSpec, ws: WeightSpec, progress: bool = True) -> Path:
    """Local path of the verified safetensors file for one weights tag.

    Tries the Hub (when the tag names a repository), then the upstream URL. A Hub
    repository or file that does not exist (404) falls back to upstream; other errors
    are collected and reported together.

    Raises:
        WeightsUnavailableError: when no source can provide the file.
        DigestMismatchError: when a downloaded file fails its pinned digest.
    """
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    tried: list[str] = []
    if ws.hf_hub_id:
        try:
            return _from_hub(ws)
        except LocalEntryNotFoundError as e:
            tried.append(f"Hub {ws.hf_hub_id}: not in the local Hub cache ({type(e).__name__})")
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
            tried.append(f"Hub {ws.hf_hub_id}: {type(e).__name__}")
            log.info("Hub has no %s/%s (%s); trying upstream", ws.hf_hub_id, ws.hf_filename, type(e).__name__)
        except HfHubHTTPError as e:
            tried.append(f"Hub {ws.hf_hub_id}: {e}")
            log.warning("Hub error for %s: %s; trying upstream", ws.hf_hub_id, e)
    if ws.url:
        try:
            return _from_upstream(spec, ws, progress)
        except WeightsUnavailableError as e:
            tried.append(str(e))
    elif not tried:
        tried.append("no Hub repository and no upstream URL registered")
    raise WeightsUnavailableError(f"cannot obtain weights {spec.name}.{ws.tag}: " + "; ".join(tried))


# ---------------------------------------------------------------------- publish


def _upload_folder(folder: Path, repo_id: str, revision: str | None) -> None:
    """Create ``repo_id`` on the Hub (``HF_ENDPOINT``, read now) if needed and upload ``folder``."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision)


def _public(value: Any) -> Any:
    """``value`` with every absolute path reduced to its last component (no local paths on the Hub)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_public(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def publish_run(
    run_dir: str | Path,
    repo_id: str,
    out_dir: str | Path,
    *,
    dry_run: bool = False,
    permission_obtained: bool = False,
    revision: str | None = None,
) -> Path:
    """Write (and upload) a Hub folder for a ``zoo finetune`` / ``zoo pretrain`` run.

    The run's checkpoint is first loaded strictly into its architecture, so a folder that
    would not load is never written. Weights fine-tuned or pretrained from a tag whose licence
    does not allow redistribution are refused unless ``permission_obtained``: they derive
    from the original. Absolute paths in the run's config (its datalist, its volumes) are
    reduced to file names.

    Args:
        run_dir: the run folder (``model.safetensors`` + ``config.json``).
        repo_id: target Hub repository (``org/name``).
        out_dir: folder to write; uploaded as is unless ``dry_run``.
    """
    import zoo
    from zoo.cards import render_card

    run = Path(run_dir)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run}: not a zoo run folder (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    spec, _ = resolve(str(cfg.get("model_name")))
    base = cfg.get("tag")  # zoo finetune records the tag it started from
    init = str((cfg.get("pretraining") or {}).get("init") or "")  # zoo pretrain: "name.tag", a file, "random"
    if not base and init.startswith(f"{spec.name}.") and init.split(".", 1)[1] in spec.tags:
        base = init.split(".", 1)[1]
    if base:
        ws = spec.weight(str(base))
        if not ws.redistributable and not permission_obtained:
            raise PermissionError(
                f"{run} was trained from {spec.name}.{base}, whose licence {ws.license!r} does not allow "
                "redistribution, and weights derived from it carry that restriction. Pass "
                "permission_obtained=True (CLI: --permission-obtained) only if the rights holder agreed."
            )
    model = zoo.create(spec.name, checkpoint_path=run)  # strict: a broken run is refused here
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model.safetensors", out / "model.safetensors")
    config = _public({**cfg, "sha256": file_digest(out / "model.safetensors"), "derived_from": base})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    labels = cfg.get("labels") or {}
    about = [
        f"# {spec.name} — {'fine-tuned' if 'finetune' in cfg else 'self-supervised pretraining'} with medzoo",
        "",
        f"Started from: {f'`{spec.name}.{base}`' if base else 'random initialisation'}. "
        f"Covers: {cfg.get('covers', 'full')}. Parameters: {sum(p.numel() for p in model.parameters()):,}.",
    ]
    if labels:
        about.append("Labels: " + ", ".join(f"{k} = {v}" for k, v in labels.items()) + ".")
    if cfg.get("preprocessing"):
        about.append(
            "Preprocessing: " + "; ".join(f"{k}: {v}" for k, v in cfg["preprocessing"].items()) + "."
        )
    about += [
        "",
        "```python",
        "import zoo",
        f'model = zoo.create("{spec.name}", checkpoint_path="<this folder>")',
        "```",
        "",
        "The architecture's card follows.",
        "",
    ]
    card = render_card(spec)
    front, body = card.split("\n---\n", 1) if card.startswith("---\n") else ("", card)
    (out / "README.md").write_text((front + "\n---\n\n" if front else "") + "\n".join(about) + body)
    if not dry_run:
        _upload_folder(out, repo_id, revision)
    return out


def publish(
    name: str,
    repo_id: str,
    out_dir: str | Path,
    *,
    dry_run: bool = False,
    checkpoint_path: str | Path | None = None,
    permission_obtained: bool = False,
    revision: str | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for ``name.tag`` and upload.

    Weights whose licence does not allow redistribution are refused unless
    ``permission_obtained`` says the rights holder agreed.

    Args:
        name: ``name.tag`` (or an alias that names a tag).
        repo_id: target Hub repository (``org/name``).
        out_dir: folder to write; uploaded as is unless ``dry_run``.
        checkpoint_path: publish this checkpoint (upstream format or safetensors)
            instead of fetching the registered one.
    """
    from safetensors.torch import save_file

    from zoo.cards import render_card
    from zoo.convert import convert_checkpoint, read_checkpoint

    spec, tag = resolve(name)
    if tag is None:
        raise ValueError(
            f"publish needs a weights tag: {name!r} names none (tags: {', '.join(spec.tags) or 'none'})"
        )
    ws = spec.weight(tag)
    if not ws.redistributable and not permission_obtained:
        raise PermissionError(
            f"{spec.name}.{tag} has licence {ws.license!r}, which does not allow redistribution. "
            "Pass permission_obtained=True (CLI: --permission-obtained) only if the rights holder agreed."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint_path is not None:
        sd = convert_checkpoint(read_checkpoint(checkpoint_path), spec)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    else:
        shutil.copyfile(fetch_weights(spec, ws), out / "model.safetensors")
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
        "license": ws.license,
        "source_url": ws.url,
        "source_digest": ws.upstream_digest,
        "sha256": file_digest(out / "model.safetensors"),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "README.md").write_text(render_card(spec, hub_tag=tag))
    if not dry_run:
        _upload_folder(out, repo_id, revision)
    return out
