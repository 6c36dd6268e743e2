"""Model cards, generated from the registry.

Every number in a card comes from the :class:`ModelSpec` (whose measured numbers are
asserted against the real models by the tests), so a card cannot drift from the code:
``tests/test_cards.py`` fails when a checked-in card differs from what this writes.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo._registry import ModelSpec, aliases_of, iter_specs, resolve

__all__ = [
    "render_card",
    "render_run_card",
    "RunFacts",
    "card_data",
    "front_matter",
    "pipeline_tag",
    "write_cards",
    "stale_cards",
    "bench_rows",
]

CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
# `benchmarks/run_all.py` writes one CSV per machine here; cards quote those rows.
BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
_HUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _fmt_params(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} M"


def _fmt_g(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} G"


def _ratio(ours: float | None, paper: float | None) -> str:
    if not ours or not paper:
        return "—"
    return f"{ours / paper:.3f}"


def pipeline_tag(spec: ModelSpec) -> str:
    """The Hub task: ``image-segmentation`` for models that segment whole volumes, else feature extraction."""
    if spec.meta.get("pipeline_tag"):
        return str(spec.meta["pipeline_tag"])
    return "image-segmentation" if spec.sliding_window else "image-feature-extraction"


def licence_fields(licences: list[str], link: str | None) -> dict[str, str]:
    """``license`` (+ ``license_name``/``license_link`` when ``other``), as the Hub reads them.

    Args:
        licences: the licence ids of the weights (``"none"`` when upstream has no licence file).
        link: where the licence (or its absence) can be checked: the upstream repository.
    """
    ids = sorted({lic.lower() for lic in licences}) or ["apache-2.0"]
    if len(ids) == 1 and ids[0] not in ("none", "other"):
        return {"license": ids[0]}
    # The Hub requires a name and a link for "other"; "none" means no licence file upstream.
    name = {("none",): "no-license", ("other",): "other"}.get(tuple(ids), "mixed")
    return {
        "license": "other",
        "license_name": name,
        "license_link": link or "https://choosealicense.com/no-permission/",
    }


def card_data(
    spec: ModelSpec,
    *,
    licences: list[str] | None = None,
    tags: list[str] | None = None,
    task: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> Any:
    """The card metadata as a ``huggingface_hub.ModelCardData`` (no empty lists, no ``None`` values).

    Args:
        spec: the model.
        licences: licence ids (default: those of the model's weights).
        tags: the card's tags (default: the architecture's).
        task: the Hub ``pipeline_tag`` (default: :func:`pipeline_tag`).
        base_model: the Hub repository the weights derive from; only an ``ORG/NAME`` id is kept.
        datasets: Hub dataset ids (default: the registry's, if any).
    """
    from huggingface_hub import ModelCardData

    if licences is None:
        licences = [w.license for w in spec.weights]
    if tags is None:
        tags = ["medzoo", "medical-imaging", "self-supervised", spec.family, "pytorch"]
    fields: dict[str, Any] = {"library_name": "medzoo", **licence_fields(licences, spec.paper.code_url)}
    fields["pipeline_tag"] = task or pipeline_tag(spec)
    fields["tags"] = list(dict.fromkeys(tags))
    ds = list(datasets if datasets is not None else spec.meta.get("datasets", ()))
    if ds:
        fields["datasets"] = ds
    metrics = list(
        spec.meta.get("metrics", ["dice"] if fields["pipeline_tag"] == "image-segmentation" else [])
    )
    if metrics:
        fields["metrics"] = metrics
    if base_model and is_hub_repo_id(base_model):
        fields["base_model"] = base_model
    return ModelCardData(**fields)


def is_hub_repo_id(value: str) -> bool:
    """Whether ``value`` is a Hub repository id ``ORG/NAME`` (what ``base_model`` must be)."""
    return bool(_HUB_REPO.match(value or ""))


def front_matter(data: Any) -> str:
    """The YAML front matter block of a card from its ``ModelCardData``."""
    return "---\n" + data.to_yaml() + "\n---"


def _front_matter(spec: ModelSpec, hub_tag: str | None) -> str:
    licences = [spec.weight(hub_tag).license] if hub_tag else None
    return front_matter(card_data(spec, licences=licences))


def _weights_section(spec: ModelSpec) -> str:
    if not spec.weights:
        return "## Weights\n\nNo pretrained weights. " + (spec.no_weights_reason or "") + "\n"
    rows = [
        "| tag | default | covers | in_chans | pretraining | licence | redistributable |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in spec.weights:
        rows.append(
            f"| `{w.tag}` | {'yes' if w.tag == spec.default_tag else ''} | {w.covers} | "
            f"{w.in_chans if w.in_chans is not None else '—'} | {w.pretraining} | {w.license} | "
            f"{'yes' if w.redistributable else 'no'} |"
        )
    prov = [
        "",
        "Provenance (a file with a recorded digest is checked against it when downloaded and loaded):",
        "",
    ]
    for w in spec.weights:
        src = []
        if w.hf_hub_id:
            src.append(
                f"Hub `{w.hf_hub_id}` (`{w.hf_filename}`, revision `{w.hf_revision or 'main'}`"
                + (f", sha256 `{w.sha256}`" if w.sha256 else ", unpinned: no commit and sha256 recorded yet")
                + ")"
            )
        if w.url:
            digest = (
                f"`{w.upstream_digest}`"
                if w.upstream_digest
                else ("no digest published upstream (the sha256 is computed and shown on first download)")
            )
            src.append(f"upstream <{w.url}>, digest {digest}")
        fmt = f" Format: {w.upstream_format}." if w.upstream_format else ""
        note = f" {w.notes}" if w.notes else ""
        prov.append(
            f"- `{spec.name}.{w.tag}`: " + "; ".join(src or ["no source registered"]) + "." + fmt + note
        )
    return "## Weights\n\n" + "\n".join(rows) + "\n" + "\n".join(prov) + "\n"


def _input_section(spec: ModelSpec) -> str:
    out = ["## Input and preprocessing", ""]
    if spec.input_size:
        c, *sp = spec.input_size
        out.append(f"- Default input: `B × {c} × {' × '.join(map(str, sp))}` (channels first).")
    if spec.sliding_window:
        sw = spec.sliding_window
        out.append(
            f"- Whole volumes: sliding-window inference (`zoo.inference.sliding_window_predict`), "
            f"window {tuple(sw.get('roi_size', ()))}, overlap {sw.get('overlap', 0.5)}."
        )
    for w in spec.weights:
        if w.preprocessing:
            items = "; ".join(f"{k}: {v}" for k, v in w.preprocessing.items())
            out.append(f"- `{w.tag}` expects {items}.")
    prep = spec.meta.get("preprocessing")
    if prep:
        items = "; ".join(f"{k}: {v}" for k, v in prep.items()) if isinstance(prep, dict) else str(prep)
        out.append(f"- Preprocessing of the paper: {items}.")
    recipe = spec.meta.get("pretraining_recipe")
    if recipe:
        items = "; ".join(f"{k}: {v}" for k, v in recipe.items()) if isinstance(recipe, dict) else str(recipe)
        out.append(f"- Pretraining recipe of the paper: {items}.")
    return "\n".join(out) + "\n"


def _cost_section(spec: ModelSpec) -> str:
    m = spec.meta
    rows = [
        "## Size and cost",
        "",
        "| | measured here | paper | ratio |",
        "|---|---|---|---|",
        f"| parameters | {_fmt_params(m.get('num_params'))} | {_fmt_params(m.get('paper_params'))} | "
        f"{_ratio(m.get('num_params'), m.get('paper_params'))} |",
    ]
    if "paper_setting_params" in m:
        ours, paper = m["paper_setting_params"], m.get("paper_params")
        rows.append(
            f"| parameters (paper's setting) | {_fmt_params(ours)} | {_fmt_params(paper)} | "
            f"{_ratio(ours, paper)} |"
        )
    if "paper_gmacs" in m:
        ours = m.get("paper_setting_gmacs", m.get("gmacs"))
        rows.append(
            f"| GMACs (paper's setting) | {_fmt_g(ours)} | {_fmt_g(m.get('paper_gmacs'))} | "
            f"{_ratio(ours, m.get('paper_gmacs'))} |"
        )
    if spec.input_size:
        rows.append(f"| GMACs at {spec.input_size} | {_fmt_g(m.get('gmacs'))} | | |")
    text = "\n".join(rows) + "\n"
    text += (
        "\nMeasured with `torch.utils.flop_counter.FlopCounterMode` (one multiply-accumulate = 2 FLOPs; "
        "MACs = FLOPs / 2), batch 1."
    )
    if m.get("flops_convention"):
        text += f" Paper's convention: {m['flops_convention'].rstrip('.')}."
    return text + "\n"


def bench_rows(name: str, bench_dir: str | Path | None = BENCH_DIR) -> list[dict[str, str]]:
    """The benchmark rows of ``name``, one per machine CSV in ``bench_dir`` (sorted by machine)."""
    if bench_dir is None or not Path(bench_dir).is_dir():
        return []
    rows = []
    for path in sorted(Path(bench_dir).glob("*.csv")):
        with path.open(newline="") as f:
            found = [r for r in csv.DictReader(f) if r["name"] == name]
        rows += [dict(r, machine=r.get("machine") or path.stem) for r in found]
    return rows


def _num(row: dict[str, str], key: str, fmt: str) -> str:
    try:
        return format(float(row[key]), fmt) if row.get(key) not in (None, "", "None") else "—"
    except ValueError:
        return "—"


def _bench_section(spec: ModelSpec, bench_dir: str | Path | None) -> str:
    rows = bench_rows(spec.name, bench_dir)
    head = "## Measured latency and memory\n\n"
    if not rows:
        return head + f"Not benchmarked yet: `python benchmarks/run_all.py {spec.name}`.\n"
    out = [
        "| machine | input | CPU ms (threads) | CPU peak MiB | onnxruntime ms | CUDA fp32 / bf16 ms "
        "| CUDA peak MiB (fp32) | measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cuda = "—"
        if r.get("cuda_fp32_ms"):
            cuda = f"{_num(r, 'cuda_fp32_ms', '.1f')} / {_num(r, 'cuda_bf16_ms', '.1f')}"
        out.append(
            f"| {r['machine']} | 1×{r['input_shape']} | {_num(r, 'cpu_ms', '.0f')} "
            f"({r.get('cpu_threads') or '?'}) | {_num(r, 'cpu_peak_mib', '.0f')} "
            f"| {_num(r, 'ort_ms', '.0f')} | {cuda} | {_num(r, 'cuda_fp32_peak_mib', '.0f')} "
            f"| {r.get('date', '')}, torch {r.get('torch_version', '?')} |"
        )
    text = head + "\n".join(out) + "\n\n"
    text += (
        "From `benchmarks/RESULTS.md` (`python benchmarks/run_all.py`): batch 1, fp32, median of the timed "
        "forwards after warm-up; CPU peak = rise of the resident set during the forward; onnxruntime runs "
        "the exported graph on the same threads."
    )
    paper_s = spec.meta.get("paper_inference_s")
    if paper_s:
        text += (
            f" The paper reports {paper_s} s per whole BTCV case on one GPU (sliding window), which is not "
            "comparable with one window on a CPU."
        )
    return text + "\n"


def render_card(
    spec: ModelSpec | str,
    hub_tag: str | None = None,
    bench_dir: str | Path | None = BENCH_DIR,
    hub_id: str | None = None,
) -> str:
    """The Markdown model card (with Hugging Face front matter) of one model.

    Args:
        spec: a ModelSpec or a model name.
        hub_tag: when writing the card of one published checkpoint, its tag.
        hub_id: the Hub repository (``ORG/NAME``) the card is published in: its usage loads that.
        bench_dir: folder of the benchmark CSVs whose rows the card quotes (None: none).
    """
    if isinstance(spec, str):
        spec = resolve(spec)[0]
    p = spec.paper
    aliases = aliases_of(spec.name)
    usage_name = f"{spec.name}.{hub_tag}" if hub_tag else spec.name
    pretrained = "pretrained=True" if spec.weights else "pretrained=False"
    parts = [
        _front_matter(spec, hub_tag),
        "",
        f"# {spec.name}" + (f" — weights `{hub_tag}`" if hub_tag else ""),
        "",
        spec.description.strip(),
        "",
        f"From *{p.title}* ({p.authors}, {p.venue} {p.year}, <{p.url}>)"
        + (f"; authors' code <{p.code_url}>." if p.code_url else "."),
    ]
    if aliases:
        parts += ["", "Aliases: " + ", ".join(f"`{a}`" for a in aliases) + "."]
    parts += [
        "",
        "## Usage",
        "",
        "```python",
        "import zoo",
        f'model = zoo.create("hf-hub:{hub_id}")  # this repository'
        if hub_id
        else f'model = zoo.create("{usage_name}", {pretrained})',
        "```",
        "",
        f'`torch.hub.load(REPO, "{spec.hub_entrypoint}", {pretrained})` builds the same model.',
        "",
        _weights_section(spec),
        _input_section(spec),
        _cost_section(spec),
        _bench_section(spec, bench_dir),
    ]
    if spec.weights:  # how to fine-tune these weights: preset, command, crop, lr, a measured result
        from zoo.presets import finetune_card_section

        parts += [finetune_card_section(spec, tag=hub_tag).rstrip(), ""]
    if spec.results_md:
        parts += ["## Results reported in the paper", "", spec.results_md.strip(), ""]
    if spec.notes:
        parts += ["## Paper/code discrepancies and reproduced quirks", ""]
        parts += [f"- {n}" for n in spec.notes] + [""]
    if spec.limitations:
        parts += ["## Limitations", ""] + [f"- {n}" for n in spec.limitations] + [""]
    parts += ["## Citation", "", "```bibtex", p.bibtex.strip(), "```", ""]
    return "\n".join(parts)


@dataclass(frozen=True)
class RunFacts:
    """What a run's card says about the run, gathered by :func:`zoo.publish.publish_run`.

    Attributes:
        repo_id: the Hub repository the run is published as (its own id, used in the usage).
        started_from: what the run started from, in words (a tag, a Hub id, a checkpoint's sha256).
        chain: the lineage, oldest first (:class:`zoo.runconfig.Link`); empty: random weights.
        licence: the licence of the published weights (that of the chain, or the one given).
        base_model: the Hub repository of the weights it started from, if they are on the Hub.
        num_params: parameter count of the published model.
        validations: the run's validation entries of ``log.jsonl`` (``dice_1``…, ``dice_mean``, ``step``).
        train_seconds: the summed wall time of the logged training steps (None: not logged).
        images: image files published beside the card (the curves), shown in it.
    """

    repo_id: str
    started_from: str = "random initialisation."
    chain: tuple[Any, ...] = ()
    licence: str | None = None
    base_model: str | None = None
    num_params: int | None = None
    validations: tuple[dict[str, float], ...] = ()
    train_seconds: float | None = None
    images: tuple[str, ...] = ()


def _base_card_link(spec: ModelSpec, chain: tuple[Any, ...], base_model: str | None) -> str:
    """Where the card of what the run started from is: linked, never copied."""
    if base_model:
        return f"[`{base_model}`](https://huggingface.co/{base_model})"
    for link in reversed(chain):
        try:
            base, tag = resolve(link.id)
        except ValueError:
            continue
        hub = base.weight(tag).hf_hub_id if tag else None
        if hub:
            return f"[`{base.name}.{tag}`](https://huggingface.co/{hub})"
        return f"`model_cards/{base.name}.md` in medzoo (the architecture and `{base.name}.{tag}`)"
    return f"`model_cards/{spec.name}.md` in medzoo (the architecture; paper: <{spec.paper.url}>)"


def _label_names(config: dict[str, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in (config.get("labels") or {}).items() if int(k) != 0}


def _dice_results(config: dict[str, Any], facts: RunFacts) -> list[Any]:
    """The ``model-index`` entries: final and best validation Dice per label, and their mean."""
    from huggingface_hub import EvalResult

    if not facts.validations:
        return []
    final, names = facts.validations[-1], _label_names(config)
    cases = (config.get("finetune") or {}).get("cases") or {}
    dataset = f"the run's validation cases ({cases.get('validation', '?')})"
    out = []
    for key, label in [*((f"dice_{c}", n) for c, n in sorted(names.items())), ("dice_mean", "mean")]:
        values = [v[key] for v in facts.validations if key in v]
        if not values:
            continue
        for which, value in (("final", final.get(key)), ("best", max(values))):
            if value is None:
                continue
            out.append(
                EvalResult(
                    task_type="image-segmentation",
                    dataset_type="medzoo-datalist",
                    dataset_name=dataset,
                    dataset_split="validation",
                    metric_type="dice",
                    metric_name=f"Dice {label} ({which})",
                    metric_value=round(float(value), 4),
                )
            )
    return out


def _setting_rows(ft: dict[str, Any]) -> list[str]:
    """The preset and every setting of the run that differs from the preset's."""
    from zoo.presets import get_preset
    from zoo.transforms import parse_intensity

    try:
        preset = get_preset(str(ft.get("preset")))
    except ValueError:
        return [f"| preset | `{ft.get('preset')}` (unknown here) |"]
    rows = [f"| preset | `{preset.name}` |"]
    n_train = ((ft.get("cases") or {}).get("training")) or 1
    spacing = tuple(ft["spacing_mm"]) if ft.get("spacing_mm") else None
    # What zoo finetune uses when neither the weights nor the options say (zoo.finetune.resolve_intensity).
    intensity = parse_intensity(preset.intensity if preset.intensity is not None else "zscore_nonzero")
    intensity = None if intensity["kind"] == "none" else intensity
    given = {
        "steps": (ft.get("total_steps"), preset.total_steps(int(n_train))),
        "learning rate": (ft.get("lr"), preset.optim.lr),
        "cases per step": (ft.get("batch_size"), preset.batch_size),
        "crops per case": (ft.get("num_samples"), preset.num_samples),
        "crop sampling": (ft.get("crop"), preset.crop),
        "spacing (mm)": (spacing, tuple(preset.spacing_mm) if preset.spacing_mm else None),
        "intensity": (ft.get("intensity"), intensity),
    }
    for name, (run_value, preset_value) in given.items():
        if run_value != preset_value:
            rows.append(f"| {name} | {run_value} (preset: {preset_value}) |")
    if ft.get("adapters"):
        rows.append(f"| adapters | {ft['adapters']} (preset: none) |")
    return rows


def _run_sections(config: dict[str, Any], facts: RunFacts) -> list[str]:
    ft = config.get("finetune") or {}
    names = _label_names(config)
    cases = ft.get("cases") or {}
    spacing = ft.get("spacing_mm")
    lines = [
        "## Data",
        "",
        f"{cases.get('training', 'an unrecorded number of')} training and "
        f"{cases.get('validation', 'an unrecorded number of')} validation case(s); labels: "
        + ", ".join(f"{c} = {n}" for c, n in sorted(names.items()))
        + f"; spacing {'×'.join(str(v) for v in spacing) + ' mm' if spacing else 'native'}; "
        f"intensity {ft.get('intensity') or 'unchanged'}; crops {ft.get('roi_size')}.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *_setting_rows(ft),
        f"| steps done | {config.get('step', '?')} of {ft.get('total_steps', '?')} |",
    ]
    if facts.train_seconds is not None:
        lines.append(f"| training time | {facts.train_seconds / 60:.1f} min (summed step times) |")
    lines.append("")
    if facts.validations:
        final = facts.validations[-1]
        lines += [
            f"## Validation Dice (sliding window, background excluded; final at step {final.get('step')})",
            "",
            "| label | final | best |",
            "|---|---|---|",
        ]
        for key, label in [*((f"dice_{c}", n) for c, n in sorted(names.items())), ("dice_mean", "mean")]:
            values = [v[key] for v in facts.validations if key in v]
            if values:
                lines.append(f"| {label} | {final.get(key, float('nan')):.4f} | {max(values):.4f} |")
        lines.append("")
    for image in facts.images:
        lines += [f"![{image.rsplit('.', 1)[0].replace('_', ' ')}]({image})", ""]
    return lines


def render_run_card(spec: ModelSpec, config: dict[str, Any], facts: RunFacts) -> str:
    """The card of a published ``zoo finetune`` / ``zoo pretrain`` run: about the run, and only it.

    What it started from (the chain), the data (counts, labels, spacing, intensity; no paths),
    the preset and the settings that differ from it, steps, time, the final and best validation
    Dice per label (also as ``model-index`` metadata), the curves, and usage by its own Hub id.
    The card of what it started from is linked, never copied.

    Args:
        spec: the run's model.
        config: the run's (public) ``config.json``.
        facts: what the card says beyond the config (:class:`RunFacts`).
    """
    from huggingface_hub import ModelCardData

    finetuned = "finetune" in config
    task = "image-segmentation" if finetuned else "image-feature-extraction"
    training = ["fine-tuned", "medical-image-segmentation"] if finetuned else ["self-supervised"]
    tags = list(dict.fromkeys(["medzoo", "medical-imaging", *training, spec.family, "pytorch"]))
    fields: dict[str, Any] = {"library_name": "medzoo", "pipeline_tag": task, "tags": tags}
    fields.update(licence_fields([facts.licence or "none"], spec.paper.code_url))
    if facts.base_model and is_hub_repo_id(facts.base_model):
        fields["base_model"] = facts.base_model
    results = _dice_results(config, facts) if finetuned else []
    if results:
        fields.update(model_name=facts.repo_id, eval_results=results, metrics=["dice"])
    data = ModelCardData(**fields)
    kind = "fine-tuned" if finetuned else "self-supervised pretraining"
    chain = " → ".join(f"`{link.id}`" for link in facts.chain) or "random weights"
    lines = [
        front_matter(data),
        "",
        f"# {facts.repo_id}: {spec.name}, {kind} with medzoo",
        "",
        f"Started from: {facts.started_from}",
        "",
        f"Chain: {chain} → this run. The card of what it started from (linked, not repeated here): "
        f"{_base_card_link(spec, facts.chain, facts.base_model)}.",
        "",
        f"Covers: {config.get('covers', 'full')}."
        + (f" Parameters: {facts.num_params:,}." if facts.num_params else "")
        + f" Licence: {facts.licence}.",
    ]
    if config.get("permission_obtained"):
        lines.append(
            f"Published with the permission of the rights holder of weights licensed {facts.licence!r}, "
            "which by itself does not allow redistribution; that permission does not extend to derived "
            "weights."
        )
    if config.get("preprocessing"):
        prep = config["preprocessing"]
        lines.append("Preprocessing: " + "; ".join(f"{k}: {v}" for k, v in prep.items()) + ".")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import zoo",
        f'model = zoo.create("hf-hub:{facts.repo_id}")  # arguments, preprocessing and labels: config.json',
        "```",
        "",
        f"`zoo predict hf-hub:{facts.repo_id} scan.nii.gz --out masks/` segments a volume from the shell."
        if finetuned
        else f"`zoo finetune hf-hub:{facts.repo_id} --data datalist.json --out run/` fine-tunes it.",
        "",
    ]
    if finetuned:
        lines += _run_sections(config, facts)
    if facts.chain:
        lines += [_lineage_section(facts.chain), ""]
    return "\n".join(lines)


def _lineage_section(chain: Any) -> str:
    """The card's list of what the weights descend from, oldest first."""
    rows = []
    for link in chain:
        sha = f", sha256 `{link.sha256}`" if link.sha256 else ""
        lic = link.license or "unknown licence"
        rows.append(f"1. `{link.id}` ({link.source}, {link.covers}{sha}; licence: {lic})")
    return "## Lineage\n\nWhat these weights descend from, oldest first:\n\n" + "\n".join(rows)


def write_cards(out_dir: str | Path = CARDS_DIR) -> list[Path]:
    """Write one card per registered model into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in iter_specs():
        path = out / f"{spec.name}.md"
        path.write_text(render_card(spec))
        paths.append(path)
    return paths


def stale_cards(cards_dir: str | Path = CARDS_DIR) -> list[str]:
    """Names whose checked-in card is missing or differs from the generator's output."""
    d = Path(cards_dir)
    stale = []
    for spec in iter_specs():
        path = d / f"{spec.name}.md"
        if not path.exists() or path.read_text() != render_card(spec):
            stale.append(spec.name)
    return stale
