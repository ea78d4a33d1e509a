"""GPU checks, skipped without CUDA (scripts/gpu_check.sh runs them on a GPU machine): the training step makes no host
sync, the epoch's syncs do not grow with its steps, CUDA graphs (trainer.compile=reduce-overhead) and bf16 keep DLB's
numbers and its cached target intact, in both backward modes, DDP runs over NCCL, GPU slots hand out distinct
slots, and the command line trains with the default speed settings and with trainer.faithful=true, a SIGTERM saves
and the same command continues to the uninterrupted run's result. `DLB_CUDA_TESTS_ON_CPU=1` runs the same tests on the CPU (their logic, not the GPU's behaviour), for working on
them without a GPU."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose, metric_rows
from dlb.config import validate
from dlb.data.datasets import ArrayDataset
from dlb.data.loader import Batch
from dlb.methods.dlb import DLB
from dlb.models import build_model
from dlb.trainer import Trainer
from dlb.device.speed import compile_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu" if os.environ.get("DLB_CUDA_TESTS_ON_CPU") else None
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA (DLB_CUDA_TESTS_ON_CPU=1: their logic on the CPU)")
ON_GPU = DEVICE == "cuda"


@contextlib.contextmanager
def no_host_sync():
    """Any implicit device->host sync inside raises (CUDA's sync debug mode)."""
    if not ON_GPU:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def synthetic(n: int, classes: int = 10):
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, classes, (n,), generator=g), classes, (0.5,) * 3, (0.25,) * 3, "cifar10")


def make_trainer(tmp_path, method: str, *overrides: str, n_train: int = 512) -> Trainer:
    name, *settings = method.split(":")  # "dlb:backward=split"
    cfg = compose(["dataset=cifar10", "dataset.root=unused", "backbone=resnet8", f"method={name}",
                   *(f"method.{s}" for s in settings), f"trainer.device={DEVICE}", "trainer.batch_size=64",
                   "trainer.epochs=2", "trainer.progress=false", "trainer.save_best=false", *overrides])
    validate(cfg)
    OmegaConf.set_struct(cfg, False)
    return Trainer(cfg, tmp_path / method.replace(":", "_"), data=(synthetic(n_train), synthetic(100)))


FAST = ["trainer.precision=bf16", "trainer.channels_last=true", "optim.fused=true"]
METHODS = ["ce", "dlb", "dlb:backward=split", "lsr", "tfkd_reg", "cskd", "pskd"]


@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "bf16+channels_last+fused"])
@pytest.mark.parametrize("method", METHODS)
def test_training_steps_make_no_host_sync(tmp_path, method, fast):
    t = make_trainer(tmp_path, method, *(FAST if fast else []))
    t.model.train()
    t.method.on_epoch_start(1, 2)  # PS-KD reads its memory from epoch 1 on
    batches = iter(t.train_loader)
    for _ in range(2):  # warm-up: DLB's first step has no last batch; cuDNN picks its kernels
        t.train_step(next(batches))
    with no_host_sync():
        for _ in range(3):  # the loader (augmentation, CutMix decisions), the method, backward, the optimizer
            logits, loss, losses = t.train_step(next(batches))
    assert torch.isfinite(loss) and logits.shape == (64, 10)


def _count_syncs(fn) -> int:
    """How many implicit host syncs fn makes (CUDA's sync debug mode, 'warn')."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen)


@pytest.mark.skipif(not ON_GPU, reason="counts CUDA syncs")
@pytest.mark.parametrize("method", ["ce", "dlb"])
def test_an_epochs_host_syncs_do_not_grow_with_its_steps(tmp_path, method):
    """Trainer.train_epoch reads its on-device sums once at the end (and every FINITE_CHECK_EVERY=50 steps): 3 and
    7 steps make the same number of syncs."""
    t = make_trainer(tmp_path, method)
    t.train_epoch(0)  # warm-up (cuDNN autotuning, first allocations)
    counts = []
    for epoch, steps in ((1, 3), (2, 7)):
        t.cfg.trainer.limit_train_batches = steps
        counts.append(_count_syncs(lambda: t.train_epoch(epoch)))
    assert counts[0] == counts[1] <= 3, counts


def _dlb_run(net, model, backward: str, steps: int = 4, autocast: bool = False):
    """`steps` DLB steps on fixed batches; returns the losses and, per step, whether the cached target still held
    that step's logits after the next step had run its forwards (a replayed graph reusing the buffer would change it)."""
    g = torch.Generator().manual_seed(1)
    method = DLB(T=3.0, alpha=1.0, backward=backward)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    losses, kept, last = [], [], None
    for _ in range(steps):
        views = [torch.randn(64, 3, 32, 32, generator=g).to(DEVICE) for _ in range(2)]
        batch = Batch(views, torch.randint(0, 10, (64,), generator=g).to(DEVICE))
        cached = method.prev
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            logits, terms = method.training_step(net, batch)
        loss = sum(terms.values())
        loss.backward()
        opt.step()
        if cached is not None:
            kept.append(torch.equal(cached["logits"], last))
        last = method.prev["logits"].clone()
        losses.append(loss.detach().float())
        assert method.prev["logits"].dtype == torch.float32  # the target stays fp32 under bf16 autocast
    return torch.stack(losses), kept


def _resnet8():
    torch.manual_seed(0)
    cfg = compose(["dataset=cifar10", "backbone=resnet8"])
    return build_model(cfg, 10).to(DEVICE)


def _eager_vs_compiled(backward: str, mode: str):
    """Eager vs compiled DLB steps from the same initial weights: (losses eager, losses compiled, kept flags, the two
    models). TF32 off on the GPU, so only fusion order differs; the previous TF32 settings are restored."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if ON_GPU:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        eager = _resnet8()
        compiled = _resnet8()
        losses_eager, _ = _dlb_run(eager, eager, backward)
        losses_comp, kept = _dlb_run(compile_model(compiled, mode), compiled, backward)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return losses_eager, losses_comp, kept, eager, compiled


# split runs under compile=default: the config rejects split with reduce-overhead (see the test after this one).
@pytest.mark.parametrize("backward", ["joint", "split"])
def test_cuda_graphs_keep_dlbs_losses_and_its_cached_target(backward):
    """trainer.compile=reduce-overhead replays CUDA graphs whose output buffers the next replay reuses; DLB keeps last
    step's logits as its target. Eager vs compiled: the same losses, and the cached target is still last step's
    logits when the next step starts."""
    mode = "reduce-overhead" if ON_GPU and backward == "joint" else "default"
    losses_eager, losses_comp, kept, eager, compiled = _eager_vs_compiled(backward, mode)
    assert all(kept), kept
    torch.testing.assert_close(losses_comp, losses_eager, rtol=1e-3, atol=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-3, msg=name)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs")
@pytest.mark.xfail(strict=False, reason="expected: split's first backward ends a CUDA-graph generation, and the next "
                   "forward frees the gradients it wrote (pytorch#169545); dlb.config rejects the combination. An "
                   "XPASS here means this torch handles it")
def test_split_backward_under_cuda_graphs():
    losses_eager, losses_comp, kept, _, _ = _eager_vs_compiled("split", "reduce-overhead")
    assert all(kept)
    torch.testing.assert_close(losses_comp, losses_eager, rtol=1e-3, atol=1e-4)


def test_bf16_autocast_keeps_dlb_close_to_fp32():
    fp32, bf16 = _resnet8(), _resnet8()
    losses_fp32, _ = _dlb_run(fp32, fp32, "joint")
    losses_bf16, _ = _dlb_run(bf16, bf16, "joint", autocast=True)
    torch.testing.assert_close(losses_bf16, losses_fp32, rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(not ON_GPU, reason="NCCL needs CUDA (tests/test_ddp.py runs DDP over gloo)")
def test_ddp_over_nccl_runs_dlb_split(tmp_path):
    """One-GPU torchrun: NCCL process group, DDP wrapper, DLB's split backward under no_sync."""
    from fakedata import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", n_train=256, n_test=64)
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                        "-m", "dlb.train", "trainer.ddp=true", "trainer.device=cuda", "dataset=fashion_mnist",
                        f"dataset.root={tmp_path}/data", "backbone=resnet8", "method=dlb", "method.backward=split",
                        "trainer.epochs=2", "trainer.batch_size=32", "trainer.progress=false", f"hydra.run.dir={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 1 and summary["steps"] == 16


@pytest.mark.skipif(not ON_GPU, reason="slots are CUDA devices")
def test_two_runs_take_two_slots_of_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("DLB_SLOT_DIR", str(tmp_path / "slots"))
    a = make_trainer(tmp_path / "a", "ce", "trainer.device=slot", "trainer.jobs_per_gpu=2")
    b = make_trainer(tmp_path / "b", "ce", "trainer.device=slot", "trainer.jobs_per_gpu=2")
    try:
        assert {(a.slot.gpu, a.slot.job), (b.slot.gpu, b.slot.job)} == {(0, 0), (0, 1)}
        assert a.device.type == b.device.type == "cuda"
    finally:
        a.close()
        b.close()


ON_CPU_NOTE = "on the CPU, tests/test_reliability.py stops and resumes runs; GPU_CHECK_SMOKE=1 runs this one too"


@pytest.mark.parametrize("speed", [
    pytest.param("default", marks=pytest.mark.skipif(not ON_GPU, reason=ON_CPU_NOTE)),
    pytest.param("faithful", marks=pytest.mark.skipif(not ON_GPU and os.environ.get("GPU_CHECK_SMOKE") != "1",
                                                      reason=ON_CPU_NOTE))])
def test_cli_stopped_by_sigterm_resumes_to_the_uninterrupted_result(tmp_path, speed):
    """`python -m dlb.train` on this device, with the default speed settings (on CUDA: channels_last, fused SGD,
    CUDA graphs) or trainer.faithful=true: a SIGTERM mid-run saves and exits, the same command continues, and the
    run ends with the metric rows and weights of one never stopped (trainer.deterministic=true)."""
    from fakedata import write_fake_fashion_mnist
    from test_reliability import Child

    from dlb.train import EXIT_PREEMPTED

    n_train = 2048 if ON_GPU else 512  # the CPU checks the logic, at a quarter of the steps
    write_fake_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", n_train=n_train, n_test=256)
    args = ["dataset=fashion_mnist", f"dataset.root={tmp_path}/data", "backbone=resnet8", "method=dlb",
            f"trainer.device={DEVICE}", "trainer.epochs=3", "trainer.batch_size=32", "trainer.deterministic=true",
            "trainer.progress=true", *(["trainer.faithful=true"] if speed == "faithful" else [])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    child = Child(env, [*args, f"hydra.run.dir={full}"])
    assert child.finish(600) == 0, child.out[-3000:]
    expected = "faithful" if speed == "faithful" else "compile reduce-overhead" if ON_GPU else "fused SGD"
    assert expected in child.out, child.out[-3000:]  # the start-up line names the resolved speed settings
    child = Child(env, [*args, f"hydra.run.dir={cut}"])
    child.wait_until(lambda: (child.position() or (0, 0))[0] == 2, timeout=600)
    child.p.send_signal(signal.SIGTERM)
    assert child.finish(120) == EXIT_PREEMPTED, child.out[-3000:]
    assert json.loads((cut / "summary.json").read_text())["status"] == "preempted"
    child = Child(env, [*args, f"hydra.run.dir={cut}"])
    assert child.finish(600) == 0, child.out[-3000:]
    assert "resumed" in child.out, child.out[-3000:]
    assert metric_rows(cut) == metric_rows(full)
    weights = [torch.load(d / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
               for d in (full, cut)]
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k
