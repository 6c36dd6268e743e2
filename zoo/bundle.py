"""MONAI bundles: a medzoo model handed to MONAI's own tools (``zoo bundle``).

A bundle is a folder that ``python -m monai.bundle run`` executes, and that MONAI Label and
MONAI Deploy load::

    configs/metadata.json    version, changelog, network_data_format (channels, spatial shape,
                             labels), licence and the weights' provenance, medzoo's version
    configs/inference.json   the weights' preprocessing contract as MONAI transforms, the sliding-
                             window (or slice) inferer with the registered window, the inversion
                             to the input grid, the label map saved
    models/model.pt          the weights (a state dict, read by MONAI's CheckpointLoader)
    docs/README.md           the model card
    LICENSE                  the licence of the weights' lineage

The network is built by ``zoo.create`` (``network_def``), so a bundle computes what ``zoo
predict`` computes: the same transforms, window, overlap and windows per forward, the same
inversion of the logits before the argmax. Licences follow the lineage as for ``zoo publish``:
weights that may not be redistributed are refused without ``permission_obtained``. The folder is
written into a temporary sibling and renamed into place when complete; a non-empty target is
refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BundleSettings", "write_bundle", "inference_config", "preprocessing_config"]

_AXES = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class BundleSettings:
    """How :func:`write_bundle` writes a bundle.

    Attributes:
        version: the bundle's version (``metadata.json``).
        permission_obtained: the rights holder of non-redistributable weights agreed.
        sw_batch_size: windows per forward (None: ``zoo predict``'s default).
    """

    version: str = "0.1.0"
    permission_obtained: bool = False
    sw_batch_size: int | None = None


def preprocessing_config(contract: Any, key: str = "image") -> list[dict[str, Any]]:
    """The MONAI config of ``contract.transforms((key,), load=True)``, transform for transform.

    Raises:
        ValueError: a contract with a step a bundle cannot state (the pretraining foreground crop).
    """
    if getattr(contract, "crop_foreground", False):
        raise ValueError(
            "a bundle predicts on the whole grid; a contract with crop_foreground is a pretraining one"
        )
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": key, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": key},
        {"_target_": "zoo.transforms.ReplaceNonFinited", "keys": [key]},
    ]
    if contract.orientation:
        steps.append(
            {"_target_": "Orientationd", "keys": key, "axcodes": contract.orientation, "labels": _AXES}
        )
    if contract.spacing_mm:
        steps.append(
            {"_target_": "Spacingd", "keys": key, "pixdim": list(contract.spacing_mm), "mode": "bilinear"}
        )
    it = dict(contract.intensity)
    if it["kind"] == "clip_scale":
        steps.append(
            {
                "_target_": "ScaleIntensityRanged",
                "keys": key,
                "a_min": it["a_min"],
                "a_max": it["a_max"],
                "b_min": it["b_min"],
                "b_max": it["b_max"],
                "clip": it["clip"],
            }
        )
    elif it["kind"] == "zscore":
        steps.append(
            {
                "_target_": "zoo.transforms.ZScored",
                "keys": [key],
                "nonzero": it["nonzero"],
                "channel_wise": it["channel_wise"],
            }
        )
    if contract.axis_order == "zyx":
        steps.append({"_target_": "Transposed", "keys": key, "indices": [0, 3, 2, 1]})
    return steps


def _network_def(name: str, args: dict[str, Any]) -> dict[str, Any]:
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
    return {"_target_": "zoo.create", "name": name, **plain}


def inference_config(p: Any, settings: Any) -> dict[str, Any]:
    """``configs/inference.json`` of a plan, with ``zoo.predict_checks.Settings`` for the window."""
    if settings.slice_axis is None:
        inferer: dict[str, Any] = {"_target_": "SlidingWindowInferer"}
    else:  # 2D models run slice by slice along the contract's axis, as zoo predict does
        inferer = {"_target_": "SliceInferer", "spatial_dim": settings.slice_axis}
    inferer.update(
        roi_size=list(settings.roi),
        sw_batch_size=settings.sw_batch_size,
        overlap=settings.overlap,
        mode="gaussian",
    )
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch", "$import zoo"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*'))))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": _network_def(p.spec.name, dict(p.model_args)),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_config(settings.contract)},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': f} for f in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": inferer,
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                # The logits go back to the input grid first, then the argmax: zoo predict's order.
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
                "strict": True,
            },
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


def _metadata(
    p: Any, settings: Any, record: dict[str, Any] | None, version: str, licence: str
) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    from zoo._version import __version__

    labels = {int(k): v for k, v in (p.labels or {}).items()}
    n_cls = settings.num_classes
    names = {str(i): labels.get(i, "background" if i == 0 else f"class {i}") for i in range(n_cls)}
    spatial = list(settings.roi)
    return {
        "version": version,
        "changelog": {version: f"{p.spec.name} exported by medzoo {__version__} (zoo bundle)"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": {"medzoo": __version__},
        "name": f"medzoo {p.spec.name}",
        "task": "segmentation",
        "description": (p.spec.description or p.spec.name).strip().split("\n\n")[0],
        "authors": p.spec.paper.authors,
        "copyright": f"weights: {licence}",
        "license": licence,
        "references": [p.spec.paper.title + (f" ({p.spec.paper.url})" if p.spec.paper.url else "")],
        "medzoo": {
            "model": p.spec.name,
            "weights": p.id,
            "sha256": (record or {}).get("sha256"),
            "lineage": (record or {}).get("lineage") or [],
            "preprocessing": settings.contract.as_dict(),
        },
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CT/MR",
                    "num_channels": settings.in_chans or 1,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): f"channel {i}" for i in range(settings.in_chans or 1)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": n_cls,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": names,
                }
            },
        },
    }


def _licence_text(licence: str, record: dict[str, Any] | None) -> str:
    chain = (record or {}).get("lineage") or []
    lines = [f"The weights in models/model.pt are distributed under: {licence}.", ""]
    if chain:
        lines.append("They descend from (oldest first):")
        lines += [f"- {c['id']} (licence: {c.get('license') or 'unknown'})" for c in chain]
        lines.append("")
    if licence.lower() in ("apache-2.0", "apache 2.0"):
        lines.append("Apache License 2.0: https://www.apache.org/licenses/LICENSE-2.0")
    lines.append("The medzoo code that builds the network is Apache-2.0.")
    return "\n".join(lines) + "\n"


def write_bundle(request: Any, out_dir: str | Path, settings: BundleSettings | None = None) -> Path:
    """Write a MONAI bundle of a model (a plan, or a request :func:`zoo.plan.plan` takes).

    Args:
        request: ``NAME[.TAG]``, a run folder, ``hf-hub:ORG/NAME``, or a :class:`zoo.plan.ModelPlan`.
        out_dir: the bundle folder (new or empty).
        settings: :class:`BundleSettings`.

    Returns:
        The bundle folder.

    Raises:
        PermissionError: weights whose lineage may not be redistributed, without permission.
        ValueError: a model that is not a segmenter a bundle can run, or a non-empty ``out_dir``.
    """
    import torch

    from zoo._factory import create_from_plan
    from zoo.cards import render_card
    from zoo.plan import ModelPlan, plan
    from zoo.predict_checks import resolve_settings
    from zoo.provenance import chain_licence
    from zoo.publish import _PERMISSION, _staged
    from zoo.runconfig import Link

    o = settings or BundleSettings()
    p = request if isinstance(request, ModelPlan) else plan(request, pretrained=True)
    if p.source == "onnx":
        raise ValueError(
            f"{p.request} is an ONNX file; a bundle is made from a model name, run or hf-hub: id"
        )
    if "num_classes" not in p.model_args:
        raise ValueError(f"{p.spec.name} is not a segmentation model; a bundle runs segmenters")
    s = resolve_settings(p.planned_cfg(), sw_batch_size=o.sw_batch_size)
    model = create_from_plan(p)  # strict load: a broken run is refused before anything is written
    record = model.pretrained_cfg.get("weights")
    chain = [Link(**x) for x in (record or {}).get("lineage") or []]
    licence, redistributable, link = chain_licence(chain)
    if redistributable is False and not o.permission_obtained:
        raise PermissionError(
            f"{p.id} descends from {link.id}, whose licence {link.license!r} does not allow redistribution; "
            f"a bundle redistributes the weights. {_PERMISSION}"
        )
    licence = licence or "apache-2.0"
    out = Path(out_dir)
    with _staged(out) as tmp:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference_config(p, s), indent=2) + "\n")
        meta = _metadata(p, s, record, o.version, licence)
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        # Every key, derived buffers too: the run's file may lack them, and MONAI's CheckpointLoader
        # (strict, as configured above) loads into a network MONAI builds, not through zoo.create.
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, tmp / "models" / "model.pt")
        card = render_card(p.spec)
        head = f"# {p.spec.name} as a MONAI bundle\n\nWeights: `{p.id}`; licence: {licence}.\n\n"
        (tmp / "docs" / "README.md").write_text(head + card.split("\n---\n", 1)[-1])
        (tmp / "LICENSE").write_text(_licence_text(licence, record))
    return out
