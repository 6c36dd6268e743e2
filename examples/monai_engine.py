"""Fine-tune a medzoo model with MONAI's own engine: ``SupervisedTrainer`` on ``zoo.transforms.for_model``.

    pip install 'medzoo[examples]'
    python examples/monai_engine.py qtunet-t.ct-ssl --data datalist.json --iterations 500

``datalist.json`` is MONAI's (``{"training": [{"image": ..., "label": ...}, ...]}``). The images get
the preprocessing the weights were trained with (orientation, spacing, intensity); the labels keep
their values (nearest-neighbour, no intensity transform). Everything after that is plain MONAI.
"""

from __future__ import annotations

import argparse
import json

import torch
from monai import transforms as T
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss

import zoo
from zoo.datalist import read_datalist


def main(argv: list[str] | None = None) -> SupervisedTrainer:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="NAME.TAG (those weights) or NAME (random initialisation)")
    ap.add_argument("--data", required=True, help="MONAI datalist JSON")
    ap.add_argument("--num-classes", type=int, default=2, help="background included")
    ap.add_argument("--roi", type=int, nargs=3, default=None, help="crop size (default: the model's input)")
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--model-kwargs", default="{}", help="JSON of architecture arguments")
    a = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = zoo.create(a.model, in_chans=1, num_classes=a.num_classes, **json.loads(a.model_kwargs))
    roi = a.roi or zoo.resolve(a.model)[0].input_size[1:]
    keys = ("image", "label")
    train_transforms = T.Compose(
        [
            zoo.transforms.for_model(model, keys=keys),  # the weights' contract; labels as integers
            T.SpatialPadd(keys, spatial_size=roi),
            T.RandSpatialCropd(keys, roi_size=roi, random_size=False),
            T.RandFlipd(keys, prob=0.5, spatial_axis=0),
        ]
    )
    cases = read_datalist(a.data)["training"]
    loader = DataLoader(Dataset(cases, train_transforms), batch_size=1, shuffle=True)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        epoch_length=a.iterations,  # the loader restarts as often as needed
        train_data_loader=loader,
        network=model.train().to(device),
        optimizer=torch.optim.AdamW(model.parameters(), lr=a.lr),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )
    trainer.run()
    print(f"{trainer.state.iteration} iterations, last loss {trainer.state.output[0]['loss']:.4f}")
    return trainer


if __name__ == "__main__":
    main()
