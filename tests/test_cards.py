"""Model cards are generated from the registry; the checked-in ones must be current."""

from __future__ import annotations

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
