"""torch.hub entrypoints: one per registered medzoo model.

    model = torch.hub.load("<owner>/medzoo", "qtunet_t", pretrained=True)
    model = torch.hub.load("path/to/medzoo", "pctnet_vf110k", source="local", pretrained=True)

Each entrypoint takes the arguments of :func:`zoo.create` (``pretrained``, ``weights``,
``checkpoint_path``, ``in_chans``, ``num_classes``, ``img_size``, model kwargs).
"""

# torch.hub checks that each of these imports before loading an entrypoint: medzoo's core install.
dependencies = [
    "torch",
    "torchvision",
    "monai",
    "huggingface_hub",
    "safetensors",
    "timm",
    "einops",
    "nibabel",
    "numpy",
    "filelock",
    "tqdm",
    "gdown",
]

import zoo as _zoo  # noqa: E402
from zoo._registry import iter_specs as _iter_specs  # noqa: E402
from zoo._registry import list_models as _list_models  # noqa: E402
from zoo._registry import resolve as _resolve  # noqa: E402


def _entrypoint(name):
    spec, tag = _resolve(name)

    def entry(pretrained=False, **kwargs):
        return _zoo.create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name.replace("-", "_").replace(".", "_")
    what = f"weights `{tag}` of " if tag else ""
    params = spec.meta.get("num_params")
    size = f" ({params / 1e6:.1f}M parameters)" if params else ""
    if tag:
        loads = f"weights {tag!r}"
    elif spec.default_tag:
        loads = f"the default weights {spec.default_tag!r}"
    else:
        loads = "nothing: no weights are published"
    # The whole description: cutting at the first ". " would end it inside "et al.".
    entry.__doc__ = (
        f"{what}{spec.name}{size}.\n\n{spec.description.strip()}\n\n"
        f"Args: see zoo.create. pretrained=True loads {loads}."
    )
    return entry


for _name in _list_models(include_aliases=True):
    globals()[_name.replace("-", "_")] = _entrypoint(_name)

del _name, _iter_specs
