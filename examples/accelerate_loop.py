"""Fine-tune a medzoo model in your own loop with Hugging Face Accelerate and timm's optimiser factory.

    pip install 'medzoo[examples]'
    accelerate launch examples/accelerate_loop.py qtunet-t.ct-ssl --data datalist.json --out ft/
    python examples/accelerate_loop.py qtunet-t.ct-ssl --data datalist.json --out ft/   # one process

The model speaks timm's training API: ``create_optimizer_v2(model, layer_decay=...)`` groups its
layers, ``--grad-checkpointing`` recomputes its encoder blocks in the backward pass. The data is
``zoo.transforms.for_model`` (labels keep their values). The result, ``OUT/model.safetensors``,
loads strictly with ``zoo.create(NAME, checkpoint_path="OUT/model.safetensors", num_classes=...)``.
"""

from __future__ import annotations

import argparse
import itertools
import json

from accelerate import Accelerator
from monai import transforms as T
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from timm.optim import create_optimizer_v2

import zoo
from zoo.datalist import read_datalist


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="NAME.TAG (those weights) or NAME (random initialisation)")
    ap.add_argument("--data", required=True, help="MONAI datalist JSON")
    ap.add_argument("--out", required=True, help="folder for model.safetensors")
    ap.add_argument("--num-classes", type=int, default=2, help="background included")
    ap.add_argument("--roi", type=int, nargs=3, default=None, help="crop size (default: the model's input)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--layer-decay", type=float, default=0.75)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--model-kwargs", default="{}", help="JSON of architecture arguments")
    a = ap.parse_args(argv)

    accelerator = Accelerator()
    model = zoo.create(a.model, in_chans=1, num_classes=a.num_classes, **json.loads(a.model_kwargs))
    model.set_grad_checkpointing(a.grad_checkpointing)
    roi = a.roi or zoo.resolve(a.model)[0].input_size[1:]
    keys = ("image", "label")
    train_transforms = T.Compose(
        [
            zoo.transforms.for_model(model, keys=keys),
            T.SpatialPadd(keys, spatial_size=roi),
            T.RandSpatialCropd(keys, roi_size=roi, random_size=False),
        ]
    )
    cases = read_datalist(a.data)["training"]
    loader = DataLoader(Dataset(cases, train_transforms), batch_size=1, shuffle=True)
    optimizer = create_optimizer_v2(model, "adamw", lr=a.lr, weight_decay=0.05, layer_decay=a.layer_decay)
    model, optimizer, loader = accelerator.prepare(model.train(), optimizer, loader)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    losses = []
    for batch in itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), a.steps):
        loss = loss_fn(model(batch["image"]), batch["label"])
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    accelerator.wait_for_everyone()
    accelerator.save_model(model, a.out)  # OUT/model.safetensors
    accelerator.print(f"{len(losses)} steps, last loss {losses[-1]:.4f}; saved {a.out}/model.safetensors")
    return losses


if __name__ == "__main__":
    main()
