"""The registry: names, tags, aliases, suggestions, and the design card's promises."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo._registry import get_spec, iter_specs, resolve

DESIGN_CARD_NAMES = ["qtunet-t", "qtunet-b", "logonet-l", "pctnet-vf110k", "resnet50-deformattn-swav"]


@pytest.mark.parametrize("name", DESIGN_CARD_NAMES)
def test_every_name_on_the_design_card_resolves(name):
    spec, _ = resolve(name)
    assert spec.name in zoo.list_models()


def test_full_id_and_alias_resolve_to_model_and_tag():
    assert resolve("qtunet-b.brats-ssl")[0].name == "qtunet-b"
    assert resolve("qtunet-b.brats-ssl")[1] == "brats-ssl"
    spec, tag = resolve("pctnet-vf110k")
    assert (spec.name, tag) == ("pctnet", "vf110k")
    assert resolve("QTUNet_T")[0].name == "qtunet-t"


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ValueError, match=r"unknown model 'qtunet-x'.*qtunet-"):
        resolve("qtunet-x")


def test_unknown_tag_lists_the_tags():
    with pytest.raises(ValueError, match=r"unknown weights tag 'ct-sl'.*ct-ssl"):
        resolve("qtunet-t.ct-sl")


def test_list_models_glob_and_pretrained_filter():
    q = zoo.list_models("qtunet*")
    assert {"qtunet-t", "qtunet-s", "qtunet-b", "qtunet-a-t", "qtunet-a-s", "qtunet-a-b"} <= set(q)
    pre = zoo.list_models("*unet*", pretrained=True)
    assert "qtunet-t" in pre and "vtunet-t" not in pre
    assert "qtunet-t.ct-ssl" in zoo.list_pretrained("qtunet-t*")


def test_weights_conflicting_with_the_tag_in_the_name_is_an_error():
    with pytest.raises(ValueError, match="already names weights"):
        zoo.create("qtunet-b.brats-ssl", weights="ct-ssl")


def test_pretrained_without_published_weights_says_so():
    with pytest.raises(zoo.NoPretrainedWeightsError, match="checkpoint_path"):
        zoo.create("vtunet-t", pretrained=True)


def test_unknown_constructor_argument_is_a_value_error():
    with pytest.raises(ValueError, match="no_such_arg"):
        zoo.create("qtunet-t", no_such_arg=3)


def test_every_spec_is_complete_enough_for_a_card():
    for spec in iter_specs():
        assert spec.description, spec.name
        assert spec.paper.bibtex.strip().startswith("@"), spec.name
        assert spec.input_size, spec.name
        assert "num_params" in spec.meta, spec.name
        assert spec.weights or spec.no_weights_reason, spec.name
        for w in spec.weights:
            assert w.license and w.pretraining, (spec.name, w.tag)


def test_model_info_reports_provenance():
    info = zoo.model_info("qtunet-t")
    ct = next(w for w in info["weights"] if w["tag"] == "ct-ssl")
    assert ct["default"] and ct["upstream_digest"].startswith("gitsha1:") and ct["license"] == "none"
    assert info["hub_entrypoint"] == "qtunet_t"


def test_torch_hub_local_entrypoints_build_models():
    import importlib.util
    import pathlib

    repo = pathlib.Path(__file__).resolve().parent.parent
    mod_spec = importlib.util.spec_from_file_location("hubconf", repo / "hubconf.py")
    hubconf = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(hubconf)
    entries = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]
    for spec in iter_specs():
        assert spec.hub_entrypoint in entries
    assert "pctnet_vf110k" in entries
    model = torch.hub.load(str(repo), "qtunet_t", source="local", pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == get_spec("qtunet-t").meta["num_params"]


def test_meta_uses_only_the_typed_keys():
    from zoo._registry import ModelMeta

    for spec in iter_specs():
        assert set(spec.meta) <= set(ModelMeta.__annotations__), spec.name


def test_listing_and_info_import_no_heavy_architecture_dependency():
    # Fresh interpreter: what `zoo list` / `zoo info` load must not include the networks' libraries.
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, zoo; zoo.list_models(); zoo.model_info('swinunetr2d-c48'); "
        "zoo.model_info('resnet50-deformattn'); from zoo.cli import main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm', 'transformers') "
        "or m.startswith('monai.networks')))"
    )
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_classes_of_lazily_built_families_are_still_importable_by_name():
    from zoo.models.deformattn import ResNet50DeformAttn
    from zoo.models.swinvit2d import SwinUNETR2d

    assert isinstance(zoo.create("swinunetr2d-c48", feature_size=12, img_size=64), SwinUNETR2d)
    assert ResNet50DeformAttn.__module__ == "zoo.models._deformattn_net"
    with pytest.raises(ImportError, match="NoSuchClass"):
        from zoo.models.swinvit2d import NoSuchClass  # noqa: F401


# ----------------------------------------------------------------------------------- register_family


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, in copies that the test may change (restored afterwards)."""
    from zoo import _registry

    _registry._ensure_loaded()
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    monkeypatch.setattr(_registry, "_ALIASES", dict(_registry._ALIASES))
    return _registry


def _toy_family(reg, **spec_changes):
    paper = get_spec("qtunet-t").paper
    shared = reg.SpecFields(
        builder=lambda **kw: torch.nn.Linear(kw["width"], 2), paper=paper, description="toy"
    )
    weights = (reg.WeightSpec(tag="w1", license="MIT", pretraining="none", url="http://127.0.0.1:9/w1.pt"),)
    return shared, [
        reg.Variant(
            "toy-s", model_args=dict(width=3), meta=reg.ModelMeta(num_params=8), aliases={"toy-small": None}
        ),
        reg.Variant(
            "toy-m",
            model_args=dict(width=5),
            aliases={"toy-m-w1": "w1"},
            spec=reg.SpecFields(weights=weights, default_tag="w1", **spec_changes),
        ),
    ]


def test_spec_fields_are_every_model_spec_field_but_the_four_with_their_own_place():
    import dataclasses

    from zoo._registry import ModelSpec, SpecFields

    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    assert set(SpecFields.__annotations__) == fields - {"name", "family", "model_args", "meta"}


def test_register_family_registers_each_variant_over_the_shared_fields_then_the_aliases(scratch_registry):
    reg = scratch_registry
    shared, variants = _toy_family(reg, description="the medium toy")
    specs = reg.register_family("toy", shared, variants)
    assert [s.name for s in specs] == ["toy-s", "toy-m"]
    assert get_spec("toy-s").description == "toy" and get_spec("toy-m").description == "the medium toy"
    assert get_spec("toy-s").meta == {"num_params": 8} and get_spec("toy-m").family == "toy"
    assert resolve("toy-small") == (get_spec("toy-s"), None)
    assert resolve("toy-m-w1") == (get_spec("toy-m"), "w1")
    # The registered builder checks its arguments like every other.
    with pytest.raises(ValueError, match="width"):
        get_spec("toy-s").builder(width=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(spec_changes=dict(head_key=("x.",))), r"toy/toy-m: not a SpecFields field: head_key"),
        (dict(spec_changes=dict(meta={})), r"not a SpecFields field: meta \(meta: give them to Variant"),
        (dict(alias_tag="w2"), r"unknown weights tag 'w2' for toy-m"),
        (dict(name="qtunet-t"), r"toy: qtunet-t already registered"),
        (dict(alias="toy-s"), r"toy: toy-s already registered, or named twice"),
        (dict(drop_builder=True), r"toy/toy-s: no builder"),
    ],
)
def test_register_family_with_one_bad_entry_registers_no_name_of_it(scratch_registry, change, message):
    import dataclasses

    reg = scratch_registry
    shared, variants = _toy_family(reg, **change.get("spec_changes", {}))
    if "alias_tag" in change:
        variants[1] = dataclasses.replace(variants[1], aliases={"toy-m-w1": change["alias_tag"]})
    if "name" in change:
        variants[1] = dataclasses.replace(variants[1], name=change["name"])
    if "alias" in change:
        variants[1] = dataclasses.replace(variants[1], aliases={change["alias"]: None})
    if change.get("drop_builder"):
        shared = {k: v for k, v in shared.items() if k != "builder"}
    registered = ([*reg._MODELS], [*reg._ALIASES])
    with pytest.raises(ValueError, match=message):
        reg.register_family("toy", shared, variants)
    assert ([*reg._MODELS], [*reg._ALIASES]) == registered


def test_every_model_file_registers_its_names_with_one_register_family_call():
    from pathlib import Path

    import zoo.models

    files = [p for p in Path(zoo.models.__file__).parent.glob("*.py") if not p.name.startswith("_")]
    assert len(files) == 5
    for path in files:
        text = path.read_text()
        assert text.count("register_family(") == 1, path.name
        assert "register_model(" not in text and "register_alias(" not in text, path.name
