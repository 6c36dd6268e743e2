"""Multi-process training: two gloo processes (as torchrun starts them) stay in lockstep."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "index": torch.tensor(i),
            "image": torch.randn(1, 32, 32, 32, generator=g),
            "label": torch.randint(0, 3, (32, 32, 32), generator=g),
        }
        for i in range(8)
    ]


def _worker(rank: int, port: int, out: str, results: str) -> None:
    # The environment torchrun gives each process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import zoo
    from zoo.train import LoopSettings, OptimConfig, make_loader, train

    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = zoo.create("fmunet", num_classes=3, feature_chns=(4, 8, 16, 32, 64), dropout=0.0)
    seen: list[int] = []

    def loss_fn(net, batch):
        seen.extend(batch["index"].tolist())
        return torch.nn.functional.cross_entropy(net(batch["image"]), batch["label"])

    loader = make_loader(_dataset(), batch_size=1)
    train(model, loss_fn, loader, out, OptimConfig(lr=1e-2), 3, LoopSettings(progress=False))
    torch.save({"state": model.state_dict(), "seen": seen}, os.path.join(results, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    # fork: the workers inherit the imported modules (spawn would re-import torch and zoo in each).
    mp.start_processes(_worker, args=(_free_port(), str(out), str(results)), nprocs=2, start_method="fork")
    r0, r1 = (torch.load(results / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # Each rank trained on its own part of the epoch (3 steps of 1 sample, 4 samples per rank)...
    assert len(r0["seen"]) == len(r1["seen"]) == 3
    assert set(r0["seen"]).isdisjoint(r1["seen"])
    # ...and gradient averaging kept the weights identical.
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in r0["state"].items())
    # Only rank 0 wrote the run folder.
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "log.jsonl",
        "model.safetensors",
        "trainer_state.pt",
    ]


def _finetune_worker(rank: int, port: int, datalist: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from zoo.finetune import FinetuneOptions, finetune

    options = FinetuneOptions(
        preset="default", steps=2, roi_size=(32, 32, 32), batch_size=1, num_samples=1,
        intensity="zscore-nonzero", val_every=2, progress=False,
        model_kwargs={"feature_chns": (4, 8, 16, 32, 64)},
    )  # fmt: skip
    finetune("fmunet", datalist, out, options, print_fn=lambda _: None)
    torch.distributed.destroy_process_group()


def test_finetune_under_two_processes_validates_on_rank_zero_and_writes_one_run(tmp_path):
    from zoo.finetune import make_mni_task
    from zoo.train import read_log

    datalist = make_mni_task(tmp_path / "data", n_train=2, n_val=1, spacing_mm=4.0)
    out = tmp_path / "run"
    mp.start_processes(
        _finetune_worker, args=(_free_port(), str(datalist), str(out)), nprocs=2, start_method="fork"
    )
    log = read_log(out)
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    assert len([e for e in log if "val" in e]) == 1  # one validation, by rank 0, not one per process
    assert (out / "model.safetensors").is_file() and (out / "best.safetensors").is_file()
