"""Data parallelism: the epoch's sharding (pure function), and a real 2-process CPU (gloo) run under torchrun whose
reduced evaluation must equal a single-process evaluation of the same weights."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO
from dlb.device.distributed import shard


def _plain_epoch(n: int, batch: int, world: int) -> list[torch.Tensor]:
    """What DeviceLoader builds for a plain shuffled training epoch: global batches of world x batch."""
    return list(torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(batch * world))


@pytest.mark.parametrize("n,batch,world", [(100, 8, 2), (100, 8, 3), (64, 8, 2), (50000, 64, 4), (21, 8, 4)])
def test_plain_shards_are_disjoint_equal_sized_global_batches(n, batch, world):
    batches = _plain_epoch(n, batch, world)
    parts = [shard(batches, r, world, train=True, global_batches=True) for r in range(world)]
    steps = len(parts[0])
    assert all(len(p) == steps for p in parts)  # every rank takes the same number of steps
    for k in range(steps):
        sizes = {len(p[k]) for p in parts}
        assert len(sizes) == 1  # ... of the same size (PS-KD's all_gather needs it)
        # step k's global batch is the one-process run's step k batch with batch world x B (up to the leftover)
        assert set(torch.cat([p[k] for p in parts]).tolist()) <= set(batches[k].tolist())
    seen = torch.cat([torch.cat(p) for p in parts])
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    assert n - len(seen) == len(batches[-1]) % world  # only the last global batch's remainder (< world) sits out
    if n == 50000:
        assert len(seen) == n and len(parts[0][0]) == batch


def test_batch_order_shards_keep_batches_whole_and_cover_the_epoch():
    batches = [torch.arange(i * 10, i * 10 + (10 if i < 6 else 4)) for i in range(7)]  # 7 batches, last partial
    parts = [shard(batches, r, 2, train=True, global_batches=False) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4  # padded to a multiple of world with the epoch's first batch
    flat = [b for p in parts for b in p]
    assert all(any(b is c for c in batches) for b in flat)  # whole batches (CS-KD's sample + partner halves)
    assert set(torch.cat(flat).tolist()) == set(torch.cat(batches).tolist())


def test_eval_shards_are_disjoint_and_cover_the_test_set():
    batches = list(torch.arange(45).split(10))
    parts = [shard(batches, r, 2, train=False, global_batches=False) for r in range(2)]
    flat = torch.cat([torch.cat(p) for p in parts]).tolist()
    assert sorted(flat) == list(range(45))


WORKER = textwrap.dedent('''
    import json, os, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import torch
    import torch.distributed as dist
    from conftest import compose
    from dlb.config import validate
    from dlb.data.datasets import ArrayDataset
    from dlb.data.loader import DeviceLoader
    from dlb.metrics import evaluate
    from dlb.models import build_model
    from dlb.trainer import Trainer

    out = {out!r}
    dist.init_process_group("gloo")  # created here, so the trainers share it and do not tear it down
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(0)
    def ds(n):
        return ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                            torch.randint(0, 10, (n,), generator=g), 10, (0.5,) * 3, (0.25,) * 3, "cifar10")
    data = (ds(64), ds(50))
    report = {{}}
    for run in ("dlb", "pskd", "dlb_split"):  # dlb_split: method.backward=split (DDP no_sync on its 1st backward)
        method = run.split("_")[0]
        extra = ["method.backward=split"] if run == "dlb_split" else []
        cfg = compose(["dataset=cifar10", "dataset.root=unused", "backbone=resnet8", f"method={{method}}", *extra,
                       "trainer.ddp=true", "trainer.device=cpu", "trainer.epochs=1", "trainer.batch_size=8",
                       "trainer.eval_batch_size=10", "trainer.progress=false", "trainer.deterministic=true"])
        validate(cfg)
        t = Trainer(cfg, f"{{out}}/{{run}}", data=data)
        mine = [b.tolist() for b in t.train_loader._batches()]
        summary = t.fit()
        parts = [None, None]
        dist.all_gather_object(parts, mine)
        # gradients were averaged: after steps on different data, every rank holds the same weights
        flat = torch.cat([q.detach().flatten() for q in t.model.parameters()])
        flats = [torch.zeros_like(flat) for _ in range(2)]
        dist.all_gather(flats, flat)
        report[run] = {{"parts": parts, "summary": summary, "same_weights": bool(torch.equal(*flats))}}
        if run == "dlb":
            joint = flat
        if run == "dlb_split":  # the same all-reduced gradient, up to float rounding
            report[run]["close_to_joint"] = bool(torch.allclose(flat, joint, rtol=1e-4, atol=1e-6))
        if method == "pskd":
            mems = [torch.zeros_like(t.method.memory) for _ in range(2)]
            dist.all_gather(mems, t.method.memory)
            report[run]["memory_equal"] = bool(torch.equal(mems[0], mems[1]))
            report[run]["rows_written"] = int((mems[0].sum(1) > 0).sum())
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:  # single process now: evaluate the checkpointed weights on the whole test set
        for method in ("dlb", "pskd"):
            state = torch.load(f"{{out}}/{{method}}/checkpoints/last.pt", weights_only=False)
            model = build_model(cfg, 10)
            model.load_state_dict(state["model"])
            loader = DeviceLoader(data[1], batch_size=10, train=False, device="cpu")
            report[method]["single"] = evaluate(model, loader)
            report[method]["reduced"] = json.loads(open(f"{{out}}/{{method}}/metrics.jsonl").readlines()[-1])
        json.dump(report, open(f"{{out}}/report.json", "w"))
''')


def test_two_process_gloo_run_matches_single_process_evaluation(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path)))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], cwd=REPO, capture_output=True, text=True, timeout=240,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for method in ("dlb", "pskd"):
        rep = report[method]
        a, b = (sum(p, []) for p in rep["parts"])
        assert not set(a) & set(b) and sorted(a + b) == list(range(64)), method  # disjoint, cover the epoch
        assert rep["summary"]["world_size"] == 2 and rep["summary"]["global_batch"] == 16
        assert rep["summary"]["steps"] == 4  # 64 images / (2 ranks x 8)
        single, reduced = rep["single"], rep["reduced"]
        assert reduced["test_n"] == single["test_n"] == 50
        assert reduced["test_acc"] == pytest.approx(single["test_acc"], rel=1e-6)
        for key in ("test_nll", "test_ece"):
            assert reduced[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), (method, key)
        assert reduced["train_images"] == 64
        assert rep["same_weights"], method  # DDP averaged the gradients of both DLB forwards
    assert report["pskd"]["memory_equal"] and report["pskd"]["rows_written"] == 64
    split = report["dlb_split"]
    assert split["summary"]["steps"] == 4 and split["same_weights"] and split["close_to_joint"]
