"""Model cards are generated from the registry; the checked-in ones must be current."""

from __future__ import annotations

from pathlib import Path

from zoo._registry import iter_specs
from zoo.cards import CARDS_DIR, render_card, stale_cards


def test_checked_in_cards_match_the_generator():
    stale = stale_cards()
    assert not stale, f"stale or missing cards: {stale}; regenerate with `zoo card`"


def test_card_has_hub_front_matter_and_required_sections():
    for spec in iter_specs():
        card = render_card(spec)
        assert card.startswith("---\nlibrary_name: medzoo\n"), spec.name
        for section in (
            "## Usage",
            "## Weights",
            "## Input and preprocessing",
            "## Size and cost",
            "## Citation",
        ):
            assert section in card, (spec.name, section)
        assert f"{spec.meta['num_params'] / 1e6:.2f} M" in card


def test_one_card_per_model():
    names = {p.stem for p in CARDS_DIR.glob("*.md")}
    assert names == {s.name for s in iter_specs()}


def test_cards_quote_the_benchmark_rows_of_their_model(tmp_path):
    import csv

    from zoo.bench import CSV_FIELDS

    row = {k: "" for k in CSV_FIELDS}
    row.update(name="logonet", input_shape="1×96×96×96", cpu_ms="3651.4", cpu_threads="2")
    row.update(cpu_peak_mib="695.2")
    row.update(ort_ms="4120.9", cuda_fp32_ms="41.26", cuda_bf16_ms="17.02", date="2026-11-22")
    with (tmp_path / "some-machine.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerow(row)
        w.writerow({**row, "name": "ulkanet", "cpu_ms": "1366"})
    card = render_card("logonet", bench_dir=tmp_path)
    section = card.split("## Measured latency and memory", 1)[1].split("\n## ", 1)[0]
    assert "| some-machine | 1×1×96×96×96 | 3651 (2) | 695 | 4121 | 41.3 / 17.0 |" in section
    assert "1366" not in section  # another model's row
    assert "5.38 s per whole BTCV case" in section  # the paper's Table 10 time, said to be unlike
    empty = render_card("ulkanet-l", bench_dir=tmp_path)
    assert "Not benchmarked yet: `python benchmarks/run_all.py ulkanet-l`" in empty


def test_the_repository_carries_the_licence_pyproject_names():
    import tomllib

    root = Path(__file__).resolve().parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"]
    text = (root / "LICENSE").read_text()
    assert declared == "Apache-2.0" and "Apache License\n" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_a_card_whose_licence_is_other_names_it_and_links_it():
    from zoo.cards import licence_fields

    for licences in (["other"], ["none"], ["apache-2.0", "cc-by-nc-4.0"]):
        fields = licence_fields(licences, "https://example.org/code")
        assert fields["license"] == "other" and fields["license_name"]
        assert fields["license_link"] == "https://example.org/code"
    assert licence_fields(["Apache-2.0"], None) == {"license": "apache-2.0"}
