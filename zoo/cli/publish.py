"""``zoo publish``: a Hub folder (and its upload) for registered weights or a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli._base import JSON, arg, command, report


@command(
    "publish",
    help="write (and upload) a Hub folder for name.tag or a run folder",
    args=[
        arg("name", help="name.tag, or the folder of a zoo finetune / pretrain run"),
        arg("--repo", required=True, help="Hub repository, ORG/NAME"),
        arg("--out", type=Path, default=None, help="new or empty folder to write (default: ORG__NAME)"),
        arg("--checkpoint", default=None, help="publish this file instead of the registered one"),
        arg("--dry-run", action="store_true", help="write the folder only"),
        arg("--revision", default=None, help="Hub branch to commit to (default: the default branch)"),
        arg(
            "--private",
            action="store_true",
            help="create the repository private (an existing one keeps its visibility)",
        ),
        arg(
            "--license",
            default=None,
            help="licence of a run's weights (default: its chain's; a run from random weights needs one)",
        ),
        arg(
            "--permission-obtained",
            action="store_true",
            help="the rights holder allowed redistribution of weights whose licence does not",
        ),
        JSON,
    ],
)
def cmd_publish(a: argparse.Namespace) -> int:
    from zoo.publish import publish, publish_run

    out = a.out or Path(a.repo.replace("/", "__"))
    if Path(a.name).is_dir():  # a zoo finetune / pretrain run folder
        if a.checkpoint:
            raise ValueError(
                "--checkpoint goes with name.tag, not with a run folder (its checkpoint is in it)"
            )
        path = publish_run(
            a.name,
            a.repo,
            out,
            dry_run=a.dry_run,
            permission_obtained=a.permission_obtained,
            revision=a.revision,
            license=a.license,
            private=a.private,
        )
    else:
        if a.license:
            raise ValueError("--license goes with a run folder; a registered tag keeps its own licence")
        path = publish(
            a.name,
            a.repo,
            out,
            dry_run=a.dry_run,
            checkpoint_path=a.checkpoint,
            permission_obtained=a.permission_obtained,
            revision=a.revision,
            private=a.private,
        )
    names = sorted(p.name for p in Path(path).iterdir())
    files, usage = ", ".join(names), f"zoo.create('hf-hub:{a.repo}')"
    data = {"repo": a.repo, "folder": path, "files": names, "uploaded": not a.dry_run, "usage": usage}
    if a.dry_run:
        report(a, f"wrote {path}: {files}", data)
    else:
        report(a, f"uploaded {files} to {a.repo} (copy in {path}); load with {usage}", data)
    return 0
