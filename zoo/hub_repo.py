"""Models published with ``zoo publish``, loaded back by their Hub id: ``hf-hub:ORG/NAME[@REVISION]``.

A medzoo repository holds ``config.json`` (model name, model arguments, preprocessing, labels,
the provenance and licence of the weights it started from) and ``model.safetensors``. The
config is fetched first, so a repository that is not a medzoo one is refused before any
weights are downloaded; the weights are then fetched at the commit the config came from, so
a push between the two downloads cannot pair one commit's config with another's weights.
Both go through ``huggingface_hub`` (its cache, ``HF_ENDPOINT``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``), announced as ``library_name="medzoo"`` so the Hub counts the downloads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.hub import DownloadLimits

__all__ = ["HUB_PREFIX", "HubRepo", "is_hub_id", "parse_hub_id", "fetch_repo", "hub_model_name"]

HUB_PREFIX = "hf-hub:"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONFIG_MAX_BYTES = 1 << 20  # a medzoo config.json is a few kB; a huge one is not ours


@dataclass(frozen=True)
class HubRepo:
    """A fetched medzoo repository: what was asked for and what was read."""

    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    commit: str  # the commit both files were read at
    config: dict[str, Any]
    weights: Path

    @property
    def id(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}@{self.commit}"


def is_hub_id(value: object) -> bool:
    """Whether ``value`` is a string starting with ``hf-hub:``."""
    return isinstance(value, str) and value.strip().startswith(HUB_PREFIX)


def parse_hub_id(value: str) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of ``hf-hub:ORG/NAME[@REVISION]``.

    Raises:
        ValueError: when the text after ``hf-hub:`` is not ``ORG/NAME`` (with an optional ``@REVISION``).
    """
    body = value.strip()[len(HUB_PREFIX) :]
    repo_id, at, revision = body.partition("@")
    if not _REPO_RE.match(repo_id) or ".." in repo_id or (at and not revision):
        raise ValueError(f"expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION, got {value!r}")
    return repo_id, (revision or None)


def _fetch(repo_id: str, filename: str, revision: str | None, what: str, limits: DownloadLimits) -> Path:
    """One file of the repository through :func:`zoo.hub._hub_download` (its byte bound, stall
    timeout, deadline and failure kinds), with the messages of a ``hf-hub:`` id."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    import zoo
    from zoo.hub import HubError, WeightsUnavailableError, _hub_download

    at = f"@{revision}" if revision else ""
    try:
        return _hub_download(
            repo_id,
            filename,
            revision,
            limits,
            refetch="load it once while online",
            where=f"hf-hub:{repo_id}{at} {filename}",
            library_name="medzoo",
            library_version=zoo.__version__,
        )
    except HubError as e:
        cause = e.__cause__
        # The Hub answers 401 for a repository that does not exist as well as for a private one.
        if isinstance(cause, RepositoryNotFoundError) and not isinstance(cause, GatedRepoError):
            raise WeightsUnavailableError(
                f"hf-hub:{repo_id}: no such repository on the Hub (or no access)"
            ) from e
        if isinstance(cause, RevisionNotFoundError):
            raise WeightsUnavailableError(
                f"hf-hub:{repo_id}: the repository has no revision {revision!r}"
            ) from e
        if e.kind == "not-found":  # the repository and revision exist: the file does not
            raise ValueError(
                f"hf-hub:{repo_id}{at} is not a medzoo repository: it has no {filename} ({what}); "
                "a medzoo repository holds config.json and model.safetensors, as `zoo publish` writes them"
            ) from e
        raise


def _commit_of(path: Path, filename: str) -> str:
    """The commit a cached Hub file belongs to: its snapshot folder is named after it."""
    return path.parents[len(Path(filename).parts) - 1].name


def _read_config(path: Path, repo_id: str) -> dict[str, Any]:
    size = path.stat().st_size
    if size > _CONFIG_MAX_BYTES:
        raise ValueError(
            f"hf-hub:{repo_id}: config.json is {size} bytes; a medzoo config is a few kB "
            f"(limit {_CONFIG_MAX_BYTES})"
        )
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"hf-hub:{repo_id}: config.json is not valid JSON ({e})") from e
    if not isinstance(config, dict) or not config.get("model_name"):
        found = sorted(config)[:12] if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"hf-hub:{repo_id} is not a medzoo repository: its config.json has no 'model_name' "
            f"(found {found}); `zoo publish` writes model_name, model_args and preprocessing there"
        )
    return config


def fetch_config(hub_id: str) -> tuple[str, str | None, str, dict[str, Any]]:
    """``(repo_id, revision, commit, config)`` of a Hub id: ``config.json`` only, no weights."""
    from zoo.hub import limits_for

    repo_id, revision = parse_hub_id(hub_id)
    limits = limits_for(_CONFIG_MAX_BYTES, fixed=True)
    path = _fetch(repo_id, "config.json", revision, "model name, arguments and preprocessing", limits)
    return repo_id, revision, _commit_of(path, "config.json"), _read_config(path, repo_id)


def fetch_repo(hub_id: str, expect: str | None = None, **overrides: Any) -> HubRepo:
    """Fetch ``config.json`` then ``model.safetensors`` of a medzoo repository, at one commit.

    The weights download is bounded by the size of the model that the config describes (built
    on the meta device: no memory), so a repository cannot make us store far more than that.

    Args:
        hub_id: ``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME@REVISION``.
        expect: the model the caller expects; another one is refused before the weights.
        **overrides: model arguments that replace the config's (as ``zoo.create`` takes them).

    Returns:
        The :class:`HubRepo` with the config and the cached weights file.

    Raises:
        ValueError: for a malformed id or a repository that is not a medzoo one.
        zoo.hub.WeightsUnavailableError: when the Hub cannot provide the files (offline, no
            repository, a file past its bound: ``HubError`` kind ``too-large``).
    """
    from zoo._registry import resolve
    from zoo.hub import limits_for

    repo_id, revision, commit, config = fetch_config(hub_id)
    spec, args = _spec_and_args(config, overrides)
    if expect is not None and resolve(expect)[0].name != spec.name:
        raise ValueError(f"{hub_id} holds a {spec.name!r} model, not {expect!r}: create({hub_id!r}, ...)")
    need = _model_bytes(spec, args)
    # The file holds the state_dict once; twice that, plus 64 MiB, leaves room for metadata and
    # a float64 export. Unknown size (arguments the builder refuses): the registered bound.
    params = int(spec.meta.get("num_params") or 0)
    bound = 2 * need + (64 << 20) if need is not None else 16 * params + (64 << 20) if params else 4 << 30
    weights = _fetch(repo_id, "model.safetensors", commit, "the weights", limits_for(bound))
    return HubRepo(repo_id, revision, commit, config, weights)


def hub_model_name(name: str) -> str:
    """The registered model a ``hf-hub:`` id holds (read from its ``config.json``); other names unchanged."""
    if not is_hub_id(name):
        return name
    return str(fetch_config(name)[3]["model_name"])


def _spec_and_args(config: dict[str, Any], overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The registered spec a config names, and the model arguments: config's, then ``overrides``."""
    from zoo._registry import resolve

    spec = resolve(str(config["model_name"]))[0]
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in (config.get("model_args") or {}).items()}
    for key in ("in_chans", "num_classes", "img_size"):
        value = config.get(key)
        if value is not None and key in spec.model_args:
            args.setdefault(key, tuple(value) if isinstance(value, list) else value)
    args.update({k: v for k, v in overrides.items() if v is not None})
    return spec, args


def _model_bytes(spec: Any, args: dict[str, Any]) -> int | None:
    """Bytes of the parameters and buffers of ``spec`` built with ``args``, measured on the meta
    device (no memory); None when the builder refuses the arguments (the real build reports why)."""
    import torch

    try:
        with torch.device("meta"):
            probe = spec.builder(**args)
    except Exception:
        return None
    return sum(t.numel() * t.element_size() for t in [*probe.parameters(), *probe.buffers()])


def _check_size(spec: Any, args: dict[str, Any], repo: HubRepo) -> None:
    """Refuse model arguments that build a model far larger than the weights the repository holds.

    The arguments come from someone else's ``config.json``: ``embed_dim: 100000`` must not
    allocate 100 GB here.
    """
    need = _model_bytes(spec, args)
    if need is None:
        return
    have = repo.weights.stat().st_size
    # An encoder-only file may be a fraction of the model; 8x plus 256 MiB leaves room for that.
    if need > 8 * have + (256 << 20):
        raise ValueError(
            f"{repo.id}: config.json's model arguments {args} build a {spec.name} of {need / 2**30:.1f} GiB, "
            f"but model.safetensors holds {have / 2**20:.1f} MiB; refusing to allocate it"
        )


def create_from_hub(
    hub_id: str,
    *,
    name: str | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **kwargs: Any,
):
    """``zoo.create`` of a Hub id: the model named by its ``config.json``, its weights loaded strictly.

    Args:
        hub_id: ``hf-hub:ORG/NAME[@REVISION]``.
        name: the model the caller expects (``create(name, checkpoint_path=hub_id)``); must
            match the repository's ``model_name``.
        features_only / out_indices: as :func:`zoo.create`.
        **kwargs: further :func:`zoo.create` arguments (``in_chans``, ``num_classes`` …), which
            override the repository's model arguments.

    Returns:
        The model in eval mode. ``pretrained_cfg["hub"]`` holds the repo id, the revision asked
        for and the commit read; ``pretrained_cfg["weights"]["source"]`` is ``"hf-hub"``.
    """
    from zoo._factory import create

    if kwargs.pop("weights", None) is not None:
        raise ValueError(f"{hub_id} names its weights already; weights= cannot be combined with it")
    kwargs.pop("pretrained", None)  # a Hub id always loads its weights
    repo = fetch_repo(hub_id, expect=name, **kwargs)
    spec, args = _spec_and_args(repo.config, kwargs)
    _check_size(spec, args, repo)
    model = create(spec.name, checkpoint_path=repo.weights, **args)
    cfg = model.pretrained_cfg
    for key in ("preprocessing", "sliding_window", "labels"):
        if repo.config.get(key):
            cfg[key] = repo.config[key]
    cfg["tag"] = repo.config.get("tag")
    cfg["hub"] = {"repo_id": repo.repo_id, "revision": repo.revision, "commit": repo.commit}
    record = dict(cfg["weights"] or {})
    record.update(source="hf-hub", id=repo.id, tag=repo.config.get("tag"))
    for key in ("license", "redistributable"):  # as the publisher recorded them, when not identified here
        if record.get(key) is None and repo.config.get(key) is not None:
            record[key] = repo.config[key]
    # What the published weights themselves started from, as the publisher recorded it.
    record["base"] = repo.config.get("init") or repo.config.get("derived_from")
    cfg["weights"] = record
    if features_only:
        from zoo.adapt import features_only as _features_only

        return _features_only(model.eval(), out_indices).eval()
    return model.eval()
