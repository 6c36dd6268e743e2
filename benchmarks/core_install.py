"""A fresh core-only install builds, runs and predicts with every model; extras fail with their hint.

    python benchmarks/core_install.py            # core venv: size, then the checks inside it (~5 min)
    python benchmarks/core_install.py --all      # also the size of a second venv with '.[all]'

Issue 16's "done when": `pip install .` without extras builds, loads and predicts with every
model, and each extra's feature without its extra fails with the one-line hint. This is a script,
not a pytest test, because it needs what tests may not use: the package index (tests never touch
the network), minutes of installing and several GB of disk. It exits 1 when a check fails.

Steps: `python -m venv` without system site packages; `pip install <checkout>` (core only, not
editable: the files a user gets); packages added and site-packages MB; then this file again,
run by the venv's Python from a temporary folder (so the checkout is not on `sys.path`), with
`--inside`: no extra is importable; every registered model builds at its small configuration
(`tests/small_configs.py`) and runs forward; every segmenter (3D, and the 2D Swin-UNETR slice by
slice) predicts a synthetic NIfTI with `zoo.predict.predict_nifti`; `zoo export` and `zoo demo`
exit with status 1, their stderr ending in the one-line `pip install 'medzoo[onnx]'` /
`'medzoo[demo]'` hint, with no traceback. The timing of the checks includes building every model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Modules that only the extras bring: their presence would make the checks prove nothing.
EXTRA_MODULES = ("onnx", "onnxruntime", "onnxscript", "lightly", "sklearn", "peft", "nilearn", "matplotlib")
# CLI features that need an extra: arguments, and the hint's last words.
EXTRA_COMMANDS = (
    (["export", "qtunet-t", "-o", "qtunet-t.onnx"], "pip install 'medzoo[onnx]'"),
    (["demo"], "pip install 'medzoo[demo]'"),
)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def _dir_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 2**20


def _pip_list(python: Path) -> list[dict]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def clean_copy(dest: Path) -> Path:
    """The checkout's files that git tracks or would track, copied to ``dest``.

    pip builds a local project in place: from the checkout itself it would leave ``build/`` and
    ``*.egg-info`` there, and a stale ``build/lib`` could put deleted modules into the wheel.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (name.decode() for name in listed)):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def make_venv(spec: str, where: Path, source: Path) -> tuple[Path, dict]:
    """A fresh venv at ``where`` with ``pip install <spec>`` run in ``source`` (a clean copy).

    Returns:
        The venv's Python, and ``{"spec", "packages" (added by the install), "mb" (site-packages),
        "install_s"}``.
    """
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    base = _pip_list(python)
    t0 = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "-q", spec], cwd=source, check=True)
    seconds = time.perf_counter() - t0
    site = next((where / "lib").glob("python*/site-packages"))
    size = {
        "spec": spec,
        "packages": len(_pip_list(python)) - len(base),
        "mb": round(_dir_mb(site)),
        "install_s": round(seconds),
    }
    return python, size


# ------------------------------------------------------------------------------ inside the venv


def _small_configs(repo: Path):
    spec = importlib.util.spec_from_file_location("small_configs", repo / "tests" / "small_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.small_config


def _synthetic_nifti(path: Path, shape: tuple[int, ...]) -> None:
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 1.0, shape).astype(np.float32)
    data[shape[0] // 4 : 3 * shape[0] // 4, shape[1] // 4 : 3 * shape[1] // 4] += 3.0  # a bright block
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)


def inside(repo: Path, work: Path) -> list[str]:
    """The checks, run by the fresh venv's Python. Returns the failures (empty: all passed)."""
    import nibabel as nib
    import numpy as np
    import torch

    import zoo
    from zoo.predict import PredictSettings, predict_nifti

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    check(
        not Path(zoo.__file__).resolve().is_relative_to(repo), f"zoo imported from the venv ({zoo.__file__})"
    )
    present = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is not None]
    check(not present, f"no extra's module is importable (found: {present or 'none'})")

    small_config = _small_configs(repo)
    image = work / "scan.nii.gz"
    _synthetic_nifti(image, (40, 44, 30))
    torch.manual_seed(0)
    for name in zoo.list_models():
        kwargs, shape = small_config(name)
        try:
            model = zoo.create(name, **kwargs)
            with torch.no_grad():
                out = model(torch.randn(shape))
            outs = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
            check(
                bool(outs) and all(torch.isfinite(t).all() for t in outs), f"{name}: builds, forward finite"
            )
        except Exception as e:  # one line per model, then the next model
            check(False, f"{name}: {type(e).__name__}: {e}")
            continue
        if not zoo.get_spec(name).sliding_window:
            continue  # an encoder (no sliding-window ROI, no label map): its forward above is the check
        out_path = work / f"{name}.nii.gz"
        try:
            if kwargs.get("deep_supervision"):  # the small config trains all heads; predicting wants one
                model = zoo.create(name, **{**kwargs, "deep_supervision": False})
            # Tiny widths: the window is the small configuration's input; 2D models go slice by slice.
            r = predict_nifti(
                model,
                image,
                out_path,
                PredictSettings(spacing_mm=(2.0, 2.0, 2.0), roi_size=shape[2:]),
                progress=False,
            )
            seg = np.asarray(nib.load(out_path).dataobj)
            ncls = int(model.pretrained_cfg["model_args"].get("num_classes", 0) or 0)
            check(
                seg.shape == (40, 44, 30) and seg.max() < max(ncls, 1) and r.label_voxels is not None,
                f"{name}: predict_nifti wrote a {seg.shape} label map (labels {np.unique(seg)[:6].tolist()})",
            )
        except Exception as e:
            check(False, f"{name}: predict_nifti: {type(e).__name__}: {e}")

    zoo_cli = Path(sys.executable).parent / "zoo"
    for args, hint in EXTRA_COMMANDS:
        r = subprocess.run([str(zoo_cli), *args], cwd=work, capture_output=True, text=True, timeout=600)
        err = r.stderr.strip().splitlines()
        last = err[-1] if err else ""
        # The hint ends the output, on one line, without a traceback (notes before it are allowed).
        check(
            r.returncode == 1 and last.endswith(hint) and "Traceback" not in r.stderr,
            f"zoo {' '.join(args)}: exit {r.returncode}, {len(err)} line(s) on stderr, last {last!r}",
        )
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="also measure a venv with '.[all]'")
    ap.add_argument("--inside", type=Path, help=argparse.SUPPRESS)  # the checkout, when run in the venv
    a = ap.parse_args()
    if a.inside:
        with tempfile.TemporaryDirectory(prefix="medzoo-core-check-") as tmp:
            failures = inside(a.inside, Path(tmp))
        print(f"{len(failures)} failure(s)")
        return 1 if failures else 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="medzoo-core-install-") as tmp:
        print(f"load average before: {_load()}", flush=True)
        source = clean_copy(Path(tmp) / "src")
        python, size = make_venv(".", Path(tmp) / "core", source)
        rows.append(size)
        print(f"core venv: {size}; load average {_load()}", flush=True)
        t0 = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
        r = subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--inside", str(REPO)], cwd=tmp, env=env
        )
        print(f"checks: exit {r.returncode} in {time.perf_counter() - t0:.0f} s; load average {_load()}")
        if a.all:
            _, size = make_venv(".[all]", Path(tmp) / "all", source)
            rows.append(size)
            print(f"[all] venv: {size}; load average {_load()}", flush=True)
    print("\n| install | packages added | site-packages MB | install s |\n|---|---|---|---|")
    for s in rows:
        print(f"| `pip install '{s['spec']}'` | {s['packages']} | {s['mb']} | {s['install_s']} |")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
