"""``zoo bundle``: a model as a MONAI bundle that ``python -m monai.bundle run`` executes."""

from __future__ import annotations

import argparse

from zoo.cli._base import JSON, arg, command, human_output, report


@command(
    "bundle",
    help="write a MONAI bundle (configs, weights, card, licence) that MONAI's runner executes",
    args=[
        arg("name", help="name.tag, a run folder or hf-hub:ORG/NAME"),
        arg("-o", "--output", required=True, help="the bundle folder to write (new or empty)"),
        arg("--checkpoint", default=None, help="a checkpoint file or run folder of NAME"),
        arg("--version", dest="bundle_version", default="0.1.0", help="the bundle's version"),
        arg("--sw-batch-size", type=int, default=None, help="windows per forward (default: zoo predict's)"),
        arg(
            "--permission-obtained",
            action="store_true",
            help="the rights holder of non-redistributable weights agreed to their redistribution",
        ),
        JSON,
    ],
)
def cmd_bundle(a: argparse.Namespace) -> int:
    from zoo.bundle import BundleSettings, write_bundle
    from zoo.plan import plan

    p = plan(a.name, checkpoint=a.checkpoint, pretrained=a.checkpoint is None)
    settings = BundleSettings(
        version=a.bundle_version, permission_obtained=a.permission_obtained, sw_batch_size=a.sw_batch_size
    )
    with human_output(a):
        out = write_bundle(p, a.output, settings)
    files = [
        "LICENSE",
        "configs/inference.json",
        "configs/metadata.json",
        "docs/README.md",
        "models/model.pt",
    ]
    run = (
        f"python -m monai.bundle run --config_file {out}/configs/inference.json "
        f"--meta_file {out}/configs/metadata.json --bundle_root {out} --dataset_dir SCANS_FOLDER"
    )
    report(
        a,
        f"wrote {out}: {', '.join(files)}; run it with {run} "
        "(MONAI's runner needs pip install 'medzoo[bundle]')",
        {"bundle": str(out), "files": files, "weights": p.id, "run": run},
    )
    return 0
