"""``config.json``: one versioned schema, one reader, one writer.

Every ``config.json`` medzoo writes (a ``zoo finetune`` or ``zoo pretrain`` run folder, a
``zoo publish`` folder, a Hub repository) is a :class:`RunConfig`, and so is the metadata
of an exported ONNX file. Such a file may come from anyone (a Hub repository, a folder
someone shared), so :func:`read_config` checks all of it before anything is built or
allocated:

* the file: at most :data:`MAX_CONFIG_BYTES`, UTF-8 JSON, an object;
* the schema: ``schema_version`` 2 (files without one are version 1 and go through
  :func:`migrate`, the one place that knows older shapes); a newer version is refused;
* every key is known and has its type; model arguments are arguments of the named model,
  of the registered types and ranges (``zoo.layers.checks.check_args``);
* the cost: the parameters that the arguments build are *estimated from the registry's
  numbers* (:func:`estimate_param_bytes`, no model is built, not even on the meta device)
  and refused past the memory budget or far past the weights that come with them;
  sliding windows are bounded per axis and in voxels.

Every error is one line that names the file and the key.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from zoo._registry import ModelSpec, UnknownNameError, registered

__all__ = [
    "SCHEMA_VERSION",
    "MAX_CONFIG_BYTES",
    "ConfigError",
    "Link",
    "RunConfig",
    "read_config",
    "parse_config",
    "write_config",
    "migrate",
    "check_model_args",
    "check_window",
    "check_labels",
    "estimate_param_bytes",
    "memory_budget_bytes",
    "METADATA_KEYS",
    "OPTIONAL_METADATA_KEYS",
    "read_onnx_metadata",
    "check_onnx_metadata",
]

SCHEMA_VERSION = 2
MAX_CONFIG_BYTES = 1 << 20  # a medzoo config.json is a few kB
MAX_WINDOW_SIDE = 1024
MAX_WINDOW_VOXELS = 1 << 27  # 512³; a window is a crop of a scan, not the scan
MAX_IN_CHANS = 512
MAX_CLASSES = 4096
KINDS = ("finetune", "pretrain", "tag")


class ConfigError(ValueError):
    """A ``config.json`` (or ONNX metadata) that medzoo does not read: names the file and the key."""


@dataclass(frozen=True)
class Link:
    """One ancestor of a set of weights: what it was, by content, and what its licence allows.

    Attributes:
        id: ``name.tag`` of registered weights, ``hf-hub:ORG/NAME@COMMIT``, or a file name.
        sha256: the digest of the file that was loaded (None: not recorded).
        license: its licence (None: unknown, e.g. a user's own file).
        redistributable: whether that licence allows republishing derived weights (None: unknown).
        covers: the part the file held (``full``, ``encoder`` …).
        source: ``registry``, ``file``, ``run``, ``hf-hub`` or ``content`` (tensors found
            byte-identical to registered weights, whatever any record said).
    """

    id: str
    sha256: str | None = None
    license: str | None = None
    redistributable: bool | None = None
    covers: str = "full"
    source: str = "file"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """The typed content of a medzoo ``config.json`` (schema :data:`SCHEMA_VERSION`).

    ``model_args`` holds the full constructor arguments (tuples for sequences); ``lineage``
    the chain of weights these descend from, oldest first (empty: random initialisation);
    ``init`` the load record of the direct parent (``zoo.provenance.load_record``), kept
    for cards; ``finetune`` / ``pretraining`` the settings of the run that wrote it, ``optim``,
    ``total_steps`` and ``step`` its optimiser, length and progress.
    """

    model_name: str
    model_args: Mapping[str, Any]
    kind: str | None = None
    tag: str | None = None
    covers: str = "full"
    untrained: tuple[str, ...] = ()
    labels: Mapping[str, str] | None = None
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    sliding_window: Mapping[str, Any] = field(default_factory=dict)
    license: str | None = None
    redistributable: bool | None = None
    permission_obtained: bool = False
    sha256: str | None = None
    source_url: str | None = None
    source_digest: str | None = None
    init: Any = None
    derived_from: str | None = None
    lineage: tuple[Link, ...] = ()
    finetune: Mapping[str, Any] | None = None
    pretraining: Mapping[str, Any] | None = None
    optim: Mapping[str, Any] | None = None
    total_steps: int | None = None
    step: int | None = None

    @property
    def spec(self) -> ModelSpec:
        return registered(self.model_name)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the writer stores (lists for tuples, plain dicts)."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "library_name": "medzoo"}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "lineage":
                value = [link.as_dict() for link in value]
            out[f.name] = _plain(value)
        spec = self.spec
        out["family"] = spec.family
        for key in ("in_chans", "num_classes", "img_size"):  # read by older medzoo versions
            out[key] = _plain(self.model_args.get(key))
        return out


def jsonable(value: Any) -> Any:
    """``value`` as JSON takes it: string keys, lists for tuples, text for paths, ``repr`` for the rest."""
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return repr(value)


def _tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


# ------------------------------------------------------------------------------------ budget


def memory_budget_bytes() -> int:
    """Half of this machine's memory (``MEDZOO_MAX_MODEL_GB`` replaces it): what a config may ask for."""
    env = os.environ.get("MEDZOO_MAX_MODEL_GB")
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            raise ConfigError(f"MEDZOO_MAX_MODEL_GB: expected a number of GB, found {env!r}") from None
    return machine_memory_bytes() // 2


def machine_memory_bytes() -> int:
    """This machine's memory (16 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


_WIDTH_WORDS = ("dim", "chns", "feature", "hidden", "width", "ffn", "embed", "channels")
_FREE = ("in_chans", "num_classes")  # bounded on their own: they size one convolution each


def _number_of(value: Any) -> float | None:
    """One magnitude of an argument: itself, or the sum of a sequence of numbers."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, list | tuple) and value and all(_number_of(v) is not None for v in value):
        return float(sum(_number_of(v) for v in value))  # type: ignore[misc]
    return None


def _width_of(value: Any) -> float | None:
    if isinstance(value, list | tuple) and value:
        nums = [_number_of(v) for v in value]
        return max(nums) if all(n is not None for n in nums) else None  # type: ignore[type-var]
    return _number_of(value)


def estimate_param_bytes(spec: ModelSpec, args: Mapping[str, Any], defaults: Mapping[str, Any]) -> float:
    """Bytes of float32 parameters that ``spec`` built with ``args`` would hold, estimated.

    From the registered parameter count, scaled by each numeric argument's ratio to its
    default: squared for widths (``embed_dim``, ``dims``, ``feature_chns`` …: a layer's
    weights grow with the product of two widths), linear for the rest (depths, heads,
    ratios); sizes do not count (they are bounded on their own). No model is built. Meant to bound a
    hostile configuration, not to predict a size: a legitimate variant is within a few
    times of it, a hostile one orders of magnitude past it.
    """
    base = float(spec.meta.get("num_params") or 1e7) * 4
    scale = 1.0
    for key, value in args.items():
        default = defaults.get(key)
        if key in _FREE or default is None or value is None:
            continue
        if "size" in key:  # input, window and patch sizes: bounded on their own, not a parameter count
            continue
        if any(w in key for w in _WIDTH_WORDS):
            v, d = _width_of(value), _width_of(default)
            r = (v / d) ** 2 if v is not None and d else 1.0
        else:
            v, d = _number_of(value), _number_of(default)
            r = v / d if v is not None and d else 1.0
        scale *= max(r, 1e-3)
    return base * scale


def _builder_defaults(spec: ModelSpec) -> dict[str, Any]:
    """Constructor defaults of the class ``spec.builder`` builds (the arguments a config may set)."""
    import importlib
    import inspect
    import sys

    fn = spec.builder
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    ret = getattr(fn, "__annotations__", {}).get("return")
    name = ret if isinstance(ret, str) else getattr(ret, "__name__", None)
    cls = getattr(sys.modules.get(fn.__module__), str(name), None) if name else None
    if cls is None and name:
        try:  # families whose classes need a heavy library keep them in _<family>_net
            cls = getattr(importlib.import_module(f"zoo.models._{spec.family}_net"), str(name), None)
        except ImportError:
            cls = None
    out: dict[str, Any] = {}
    if cls is not None:
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD:
                out[p.name] = p.default
    return out


def check_model_args(
    spec: ModelSpec,
    args: Any,
    where: str,
    weights_bytes: int | None = None,
    key: str = "model_args",
) -> dict[str, Any]:
    """Check model arguments read from a file; returns them with tuples for sequences.

    Each key must be an argument of ``spec``'s model, each value of the registered type and
    range; ``in_chans``/``num_classes`` are bounded; the estimated parameter bytes
    (:func:`estimate_param_bytes`) must fit :func:`memory_budget_bytes` and, when the weights
    that come with the arguments are known, stay within 8x their size plus 256 MiB.

    Raises:
        ConfigError: naming ``where`` and the key.
    """
    from zoo.layers.checks import check_args

    if not isinstance(args, Mapping):
        raise ConfigError(f"{where}: {key}: expected an object, found {type(args).__name__}")
    args = {str(k): _tuples(v) for k, v in args.items()}
    defaults = dict(spec.model_args)
    unknown = [k for k in args if k not in defaults]
    if unknown:
        defaults = {**_builder_defaults(spec), **defaults}
        unknown = [k for k in args if k not in defaults]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], list(defaults), n=2)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ConfigError(
            f"{where}: {key}.{unknown[0]}: not an argument of {spec.name}{hint}; "
            f"its arguments: {', '.join(sorted(defaults))}"
        )
    try:
        check_args(args, defaults, spec.name)
    except ValueError as e:
        raise ConfigError(f"{where}: {key}: {e}") from None
    for arg, top in (("in_chans", MAX_IN_CHANS), ("num_classes", MAX_CLASSES)):
        if isinstance(args.get(arg), int) and args[arg] > top:
            raise ConfigError(f"{where}: {key}.{arg}: expected at most {top}, found {args[arg]}")
    need = estimate_param_bytes(spec, args, defaults)
    budget = memory_budget_bytes()
    if need > budget:
        raise ConfigError(
            f"{where}: {key} {_plain(args)} build a {spec.name} of {need / 2**30:.1f} GiB, but the "
            f"memory budget is {budget / 2**30:.1f} GiB (MEDZOO_MAX_MODEL_GB); refusing to allocate it"
        )
    if weights_bytes is not None and need > 8 * weights_bytes + (256 << 20):
        raise ConfigError(
            f"{where}: {key} {_plain(args)} build a {spec.name} of {need / 2**30:.1f} GiB, "
            f"but model.safetensors holds {weights_bytes / 2**20:.1f} MiB; refusing to allocate it"
        )
    return args


def check_window(
    window: Any, where: str, dims: int | None = None, key: str = "sliding_window"
) -> dict[str, Any]:
    """Check a ``sliding_window`` mapping: ``roi_size`` within :data:`MAX_WINDOW_SIDE` per axis and
    :data:`MAX_WINDOW_VOXELS` in all, ``overlap`` in [0, 1), ``mode`` gaussian or constant."""
    if window is None:
        return {}
    if not isinstance(window, Mapping):
        raise ConfigError(f"{where}: {key}: expected an object, found {type(window).__name__}")
    out = dict(window)
    unknown = sorted(set(out) - {"roi_size", "overlap", "mode", "sw_batch_size"})
    if unknown:
        raise ConfigError(f"{where}: {key}.{unknown[0]}: unknown key (roi_size, overlap, mode)")
    roi = out.get("roi_size")
    if roi is not None:
        ok = (
            isinstance(roi, list | tuple)
            and roi
            and all(isinstance(v, int) and not isinstance(v, bool) for v in roi)
        )
        if not ok or (dims is not None and len(roi) != dims):
            want = f"{dims} ints" if dims else "a list of ints"
            raise ConfigError(f"{where}: {key}.roi_size: expected {want}, found {roi!r}")
        if any(not 1 <= v <= MAX_WINDOW_SIDE for v in roi) or math.prod(roi) > MAX_WINDOW_VOXELS:
            raise ConfigError(
                f"{where}: {key}.roi_size: expected 1..{MAX_WINDOW_SIDE} per axis and at most "
                f"{MAX_WINDOW_VOXELS} voxels, found {list(roi)}"
            )
        out["roi_size"] = tuple(roi)
    if "overlap" in out:
        v = out["overlap"]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < 1:
            raise ConfigError(f"{where}: {key}.overlap: expected a number in [0, 1), found {v!r}")
    if "mode" in out and out["mode"] not in ("gaussian", "constant"):
        raise ConfigError(f"{where}: {key}.mode: expected gaussian or constant, found {out['mode']!r}")
    if "sw_batch_size" in out:
        v = out["sw_batch_size"]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 64:
            raise ConfigError(f"{where}: {key}.sw_batch_size: expected an int in 1..64, found {v!r}")
    return out


def check_labels(labels: Any, where: str, key: str = "labels") -> dict[str, str] | None:
    """``{"0": "background", …}``: class indices (as text) to names, at most :data:`MAX_CLASSES`."""
    if labels is None:
        return None
    if isinstance(labels, list):
        labels = {str(i): v for i, v in enumerate(labels)}
    if not isinstance(labels, Mapping) or len(labels) > MAX_CLASSES:
        raise ConfigError(f"{where}: {key}: expected an object of class index → name, found {_short(labels)}")
    out = {}
    for k, v in labels.items():
        if not str(k).isdigit() or not isinstance(v, str) or len(v) > 200:
            raise ConfigError(
                f"{where}: {key}.{k}: expected a class index mapped to a name, found {_short(v)}"
            )
        out[str(int(k))] = v
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


# ------------------------------------------------------------------------------------ schema

# key → (types allowed, description for the message); None is allowed for every optional key.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "schema_version": ((int,), "an int"),
    "library_name": ((str,), "a string"),
    "kind": ((str,), f"one of {', '.join(KINDS)}"),
    "model_name": ((str,), "a registered model name"),
    "model_args": ((dict,), "an object"),
    "family": ((str,), "a string"),
    "tag": ((str,), "a weights tag"),
    "covers": ((str,), "full, encoder or a declared part"),
    "untrained": ((list,), "a list of key prefixes"),
    "in_chans": ((int,), "an int"),
    "num_classes": ((int,), "an int"),
    "img_size": ((int, list), "an int or a list of ints"),
    "labels": ((dict, list), "an object of class index → name"),
    "preprocessing": ((dict,), "an object"),
    "sliding_window": ((dict,), "an object"),
    "license": ((str,), "a licence id"),
    "redistributable": ((bool,), "true or false"),
    "permission_obtained": ((bool,), "true or false"),
    "sha256": ((str,), "a hex digest"),
    "source_url": ((str,), "a URL"),
    "source_digest": ((str,), "algo:hex"),
    "init": ((dict, str), "a load record"),
    "derived_from": ((str,), "a string"),
    "lineage": ((list,), "a list of links"),
    "finetune": ((dict,), "an object"),
    "pretraining": ((dict,), "an object"),
    "optim": ((dict,), "an object"),
    "total_steps": ((int,), "an int"),
    "step": ((int,), "an int"),
}
_LINK_TYPES = {
    "id": (str,),
    "sha256": (str, type(None)),
    "license": (str, type(None)),
    "redistributable": (bool, type(None)),
    "covers": (str,),
    "source": (str,),
}


def migrate(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Schema 1 (no ``schema_version``: medzoo before the run schema) → schema 2.

    Version 1 files carried the tag a run started from in ``tag`` (the oldest runs), a load
    record in ``init`` (``zoo finetune``) or in ``pretraining.init`` (a record, ``name.tag``
    or a path; ``"random"`` for none), and ``in_chans``/``num_classes``/``img_size`` beside
    ``model_args``. Their lineage is not recorded: it is established from ``init`` by
    ``zoo.provenance.read_init`` when needed.
    """
    out = dict(raw)
    version = out.pop("schema_version", 1)
    if version == SCHEMA_VERSION:
        return out
    if version != 1:
        raise ConfigError(
            f"{where}: schema_version {version!r} is not one this medzoo reads (1 or {SCHEMA_VERSION}); "
            "upgrade medzoo to read it"
        )
    args = (
        dict(out.get("model_args") or {})
        if isinstance(out.get("model_args"), dict)
        else out.get("model_args")
    )
    if isinstance(args, dict):
        for key in ("in_chans", "num_classes", "img_size"):
            if out.get(key) is not None:
                args.setdefault(key, out[key])
        out["model_args"] = args
    if "kind" not in out:
        if isinstance(out.get("finetune"), dict):
            out["kind"] = "finetune"
        elif isinstance(out.get("pretraining"), dict):
            out["kind"] = "pretrain"
        elif out.get("source_url") is not None or out.get("source_digest") is not None:
            out["kind"] = "tag"
    pre = out.get("pretraining")
    if out.get("init") is None and isinstance(pre, dict) and pre.get("init") not in (None, "random", ""):
        out["init"] = pre["init"]
    if out.get("init") is None and out.get("tag") and out.get("kind") != "tag":
        out["init"] = f"{out.get('model_name')}.{out['tag']}"  # the oldest runs: the tag they started from
    if out.get("init") in ("random", ""):
        out["init"] = None
    if out.get("kind") == "tag" and out.get("covers") is None:
        out["covers"] = "full"
    return out


def parse_config(raw: Any, where: str, *, weights_bytes: int | None = None) -> RunConfig:
    """Check a parsed ``config.json`` object and return it typed (see the module docstring)."""
    from zoo.transforms import InputContract

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object, found a JSON {type(raw).__name__}")
    if not raw.get("model_name"):
        raise ConfigError(
            f"{where} has no 'model_name' (found {sorted(raw)[:12]}): not a medzoo config; "
            "`zoo publish` and zoo runs write model_name, model_args and preprocessing there"
        )
    data = migrate(raw, where)
    unknown = sorted(k for k in data if k not in _TYPES)
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: not a key of a medzoo config (schema {SCHEMA_VERSION})")
    for key, value in data.items():
        types, want = _TYPES[key]
        if value is not None and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise ConfigError(f"{where}: {key}: expected {want}, found {_short(value)}")
    name = data.get("model_name")
    if not name:
        raise ConfigError(f"{where}: model_name: missing; a medzoo config names its model")
    try:
        spec = registered(name)
    except UnknownNameError as e:
        raise ConfigError(f"{where}: model_name: {e}") from None
    if data.get("kind") is not None and data["kind"] not in KINDS:
        raise ConfigError(f"{where}: kind: expected one of {', '.join(KINDS)}, found {data['kind']!r}")
    args = check_model_args(spec, data.get("model_args") or dict(spec.model_args), where, weights_bytes)
    args = {**{k: _tuples(v) for k, v in spec.model_args.items()}, **args}
    tag = data.get("tag")
    if tag is not None and tag not in spec.tags and data.get("kind") == "tag":
        raise ConfigError(
            f"{where}: tag: {spec.name} has no weights tag {tag!r} (tags: {', '.join(spec.tags)})"
        )
    covers = data.get("covers") or "full"
    if covers != "full" and covers not in spec.partial_components:
        raise ConfigError(
            f"{where}: covers: expected full or one of {sorted(spec.partial_components)}, found {covers!r}"
        )
    prep = data.get("preprocessing") or {}
    try:
        InputContract.from_preprocessing(prep)
    except ValueError as e:
        raise ConfigError(f"{where}: preprocessing: {e}") from None
    dims = len(spec.input_size) - 1 if spec.input_size and spec.sliding_window else None
    window = check_window(data.get("sliding_window"), where, dims)
    lineage = []
    for i, link in enumerate(data.get("lineage") or []):
        if not isinstance(link, dict) or "id" not in link:
            raise ConfigError(f"{where}: lineage[{i}]: expected an object with an id, found {_short(link)}")
        for k, v in link.items():
            if k not in _LINK_TYPES or not isinstance(v, _LINK_TYPES[k]):
                raise ConfigError(f"{where}: lineage[{i}].{k}: unexpected key or type, found {_short(v)}")
        lineage.append(Link(**link))
    untrained = data.get("untrained") or []
    if not all(isinstance(u, str) for u in untrained):
        raise ConfigError(f"{where}: untrained: expected a list of key prefixes, found {_short(untrained)}")
    for key in ("step", "total_steps"):
        if data.get(key) is not None and data[key] < 0:
            raise ConfigError(f"{where}: {key}: expected ≥ 0, found {data[key]}")
    return RunConfig(
        model_name=spec.name,
        model_args=args,
        kind=data.get("kind"),
        tag=tag,
        covers=covers,
        untrained=tuple(untrained),
        labels=check_labels(data.get("labels"), where),
        preprocessing=dict(prep),
        sliding_window=window,
        license=data.get("license"),
        redistributable=data.get("redistributable"),
        permission_obtained=bool(data.get("permission_obtained")),
        sha256=data.get("sha256"),
        source_url=data.get("source_url"),
        source_digest=data.get("source_digest"),
        init=data.get("init"),
        derived_from=data.get("derived_from"),
        lineage=tuple(lineage),
        finetune=data.get("finetune"),
        pretraining=data.get("pretraining"),
        optim=data.get("optim"),
        total_steps=data.get("total_steps"),
        step=data.get("step"),
    )


def read_config(path: str | Path, *, where: str | None = None, weights_bytes: int | None = None) -> RunConfig:
    """Read and check a ``config.json`` (see the module docstring); the file is read at most once.

    Args:
        path: the file.
        where: how to name it in errors (default: the path).
        weights_bytes: size of the weights file that comes with it, when known (bounds the model).

    Raises:
        ConfigError: one line naming the file and the key; FileNotFoundError when there is none.
    """
    path = Path(path)
    where = where or str(path)
    with open(path, "rb") as f:  # a link to /etc/passwd or a FIFO: read bounded, never echoed
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes; a medzoo config is a few kB")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        kind = type(e).__name__
        raise ConfigError(f"{where}: not a JSON config ({kind}); medzoo writes config.json as JSON") from None
    return parse_config(raw, where, weights_bytes=weights_bytes)


def write_config(path: str | Path, config: RunConfig) -> Path:
    """Write ``config`` as ``config.json`` atomically (a temporary sibling renamed into place)."""
    from zoo._files import write_bytes_atomically

    return write_bytes_atomically(path, json.dumps(config.to_json(), indent=2) + "\n")


def check_onnx_metadata(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check the decoded medzoo metadata of an exported ONNX file with the rules of ``config.json``.

    Args:
        meta: the ``medzoo.*`` values, JSON-decoded, keys without the prefix.
        where: the file, for messages.

    Raises:
        ConfigError: one line naming the file and the metadata key.
    """
    out = dict(meta)

    def bad(key: str, want: str) -> ConfigError:
        return ConfigError(f"{where}: metadata medzoo.{key}: expected {want}, found {_short(out.get(key))}")

    for key in ("model_args", "preprocessing"):
        if not isinstance(out.get(key), dict):
            raise bad(key, "an object")
    if out.get("weights") is not None and not isinstance(out["weights"], dict):
        raise bad("weights", "an object or null")
    size = out.get("input_size")
    if not isinstance(size, list) or not size or not all(isinstance(v, int) and 1 <= v <= 4096 for v in size):
        raise bad("input_size", "a list of sizes")
    axes = out.get("input_axes")
    if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
        raise bad("input_axes", "a list of axis names")
    n = out.get("num_classes")
    if n not in (None, ""):
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise bad("num_classes", "an integer") from None
        if not 1 <= n <= MAX_CLASSES:
            raise bad("num_classes", f"an integer in 1..{MAX_CLASSES}")
    out["num_classes"] = n or None
    from zoo.transforms import InputContract

    try:
        InputContract.from_preprocessing(out["preprocessing"])
    except ValueError as e:
        raise ConfigError(f"{where}: metadata medzoo.preprocessing: {e}") from None
    out["labels"] = check_labels(out.get("labels"), where, "metadata medzoo.labels")
    out["sliding_window"] = check_window(
        out.get("sliding_window"), where, None, "metadata medzoo.sliding_window"
    )
    out["sliding_window"] = out["sliding_window"] or None
    if isinstance(out.get("model"), str):
        try:
            spec = registered(out["model"])
        except UnknownNameError:
            spec = None
        if spec is not None:
            check_model_args(spec, out["model_args"], where, None, "metadata medzoo.model_args")
    return out


# ------------------------------------------------------------------------------- ONNX metadata

METADATA_KEYS = (
    "medzoo.version",
    "medzoo.model",
    "medzoo.family",
    "medzoo.weights_tag",
    "medzoo.weights_sha256",
    "medzoo.weights",
    "medzoo.model_args",
    "medzoo.input_size",
    "medzoo.input_axes",
    "medzoo.axis_order",
    "medzoo.preprocessing",
    "medzoo.labels",
    "medzoo.num_classes",
    "medzoo.sliding_window",
)
# Keys added later: written by every export, read when present (older files lack them).
OPTIONAL_METADATA_KEYS = ("medzoo.min_onnxruntime",)
_JSON_KEYS = {
    "medzoo.weights",
    "medzoo.model_args",
    "medzoo.input_size",
    "medzoo.input_axes",
    "medzoo.preprocessing",
    "medzoo.labels",
    "medzoo.sliding_window",
}


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The medzoo description of an exported file, from its ``metadata_props`` alone.

    Returns:
        ``{"version", "model", "family", "weights_tag", "weights_sha256", "weights",
        "model_args", "input_size", "input_axes", "axis_order", "preprocessing", "labels",
        "num_classes", "sliding_window", "min_onnxruntime", "doc_string"}`` (JSON values decoded;
        keys without the ``medzoo.`` prefix; ``min_onnxruntime`` is None in files that predate it).

    Raises:
        ValueError: not an ONNX file, or one without medzoo metadata (exported elsewhere or by
            an older medzoo), naming the keys that are missing.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{path}: not an ONNX file ({type(e).__name__}: {str(e)[:200]})") from e
    props = {p.key: p.value for p in m.metadata_props}
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise ValueError(
            f"{path}: expected medzoo metadata ({', '.join(METADATA_KEYS[:3])} …), missing "
            f"{', '.join(missing)}; re-export it with zoo export"
        )
    out: dict[str, Any] = {}
    for k in METADATA_KEYS:
        v = props[k]
        if k in _JSON_KEYS:
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}: metadata {k} is not valid JSON ({e.msg} at char {e.pos})"
                ) from None
        out[k.removeprefix("medzoo.")] = v
    check_onnx_metadata(out, str(path))  # types, ranges and the model's cost: before any session
    out["num_classes"] = int(out["num_classes"]) if out["num_classes"] else None
    out["min_onnxruntime"] = props.get("medzoo.min_onnxruntime") or None
    out["doc_string"] = m.doc_string
    return out
