"""Speed switches keep the numbers: fused/foreach SGD, torch.compile of the model (DLB's two forwards intact), the
GPU slot allocator, the in-memory data path of the Trainer and the benchmark script. No timing assertions: speed is
measured by scripts/benchmark.py (docs/performance.md), never by tests."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import REPO, compose
from dlb.config import validate
from dlb.errors import ConfigError
from dlb.data.datasets import ArrayDataset
from dlb.data.loader import Batch
from dlb.methods import METHODS
from dlb.methods.dlb import DLB
from dlb.train import load_config
from dlb.trainer import Trainer, startup_lines
from dlb.device.speed import CPU_COMPILE_MIN_STEPS, build_optimizer, compile_model, resolve_speed
from dlb.device.placement import GpuSlot, resolve_device


def small_net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def optim_cfg(fused):
    return OmegaConf.create({"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "fused": fused})


def dlb_steps(model, optimizer, steps: int = 3):
    """`steps` DLB steps on fixed random batches; returns the losses."""
    g = torch.Generator().manual_seed(1)
    method, losses = DLB(T=3.0, alpha=1.0), []
    for _ in range(steps):
        views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
        _, terms = method.training_step(model, Batch(views, torch.randint(0, 10, (8,), generator=g)))
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_fused_sgd_gives_the_plain_loops_weights():
    plain, fast = small_net(), small_net()
    opt_plain = build_optimizer(optim_cfg(False), plain.parameters(), fused=False)
    opt_fast = build_optimizer(optim_cfg(True), fast.parameters(), fused=True)  # optim.fused=auto's choice on CPU
    assert opt_plain.defaults["foreach"] is False and not opt_plain.defaults["fused"]
    assert opt_fast.defaults["fused"]
    torch.testing.assert_close(dlb_steps(fast, opt_fast), dlb_steps(plain, opt_plain), rtol=1e-6, atol=0)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        # The same arithmetic; the fused kernel's vectorised loop rounds an odd element 1 ulp apart (measured: 1
        # element of 1,000 after 3 steps here, none of resnet32's 0.47M after 3 CE steps).
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8, msg=name)


def test_compiled_model_matches_eager_and_keeps_two_forwards():
    """Three DLB steps, eager vs torch.compile (inductor, CPU): same losses and weights within float rounding
    (inductor fuses and reorders reductions), and both ran two separate forwards per step (BatchNorm counted them)."""
    eager, compiled = small_net(), small_net()
    net = compile_model(compiled, "default")
    losses_eager = dlb_steps(eager, build_optimizer(optim_cfg(False), eager.parameters(), fused=False))
    try:
        losses_comp = dlb_steps(net, build_optimizer(optim_cfg(False), compiled.parameters(), fused=False))
    except Exception as e:  # no working C++ toolchain for inductor here
        pytest.skip(f"torch.compile (inductor) cannot build on this machine: {type(e).__name__}: {str(e)[:200]}")
    torch.testing.assert_close(losses_comp, losses_eager, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    bn = compiled[1]
    assert bn.num_batches_tracked.item() == eager[1].num_batches_tracked.item() == 1 + 2 + 2  # step 1: no last batch
    assert list(compiled.state_dict()) == list(eager.state_dict())  # compile wraps; the model's keys are unchanged


def test_reduce_overhead_copies_outputs_out_of_the_graph():
    net = compile_model(small_net(), "reduce-overhead")
    (hook,) = net._forward_hooks.values()  # CUDA graphs reuse output buffers; DLB keeps last step's logits
    out = torch.randn(2, 3)
    copy_ = hook(net, (None,), out)
    assert torch.equal(copy_, out) and copy_.data_ptr() != out.data_ptr()


def test_bad_speed_settings_are_config_errors(tmp_path):
    base = ["dataset=cifar10", "backbone=resnet8"]
    for override, key in [("trainer.compile=fast", "trainer.compile"), ("optim.fused=maybe", "optim.fused"),
                          ("trainer.jobs_per_gpu=0", "trainer.jobs_per_gpu")]:
        with pytest.raises(ConfigError, match=key):
            load_config(base + [override])
    with pytest.raises(ConfigError, match="forward_features"):
        validate(compose(base + ["trainer.ddp=true", "method=ddgsd"]))
    with pytest.raises(ConfigError, match="dataset.loader"):
        validate(compose(base + ["trainer.ddp=true", "dataset.loader=torch"]))
    validate(compose(base + ["trainer.compile=reduce-overhead", "optim.fused=false", "trainer.device=slot"]))


def test_ddp_without_torchrun_says_how_to_start_it(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose(["dataset=cifar10", "backbone=resnet8", "trainer.ddp=true", "trainer.device=cpu"])
    with pytest.raises(ConfigError, match="torchrun"):
        Trainer(cfg, tmp_path)


# --- GPU slots ------------------------------------------------------------------------------------------------


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_slots_are_distinct_breadth_first_and_released_on_close(tmp_path, two_gpus):
    slots = [GpuSlot(jobs_per_gpu=2, slot_dir=tmp_path, timeout_s=0) for _ in range(4)]
    assert [(s.gpu, s.job) for s in slots] == [(0, 0), (1, 0), (0, 1), (1, 1)]  # one per GPU before doubling up
    assert [str(s.device) for s in slots] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(RuntimeError, match="taken"):
        GpuSlot(jobs_per_gpu=2, slot_dir=tmp_path, timeout_s=0)
    slots[1].close()
    again = GpuSlot(jobs_per_gpu=2, slot_dir=tmp_path, timeout_s=0)
    assert (again.gpu, again.job) == (1, 0)
    for s in slots + [again]:
        s.close()


def test_a_slot_held_by_another_process_is_skipped(tmp_path, two_gpus, monkeypatch):
    holder = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(REPO)!r})
        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: 2
        from dlb.device.placement import GpuSlot
        s = GpuSlot(1)
        print(s.gpu, flush=True)
        sys.stdin.read()  # hold the slot until the test closes our stdin
    """)
    monkeypatch.setenv("DLB_SLOT_DIR", str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "0"
        mine = GpuSlot(1, timeout_s=0)  # DLB_SLOT_DIR: the same dir as the other process
        assert mine.gpu == 1
        with pytest.raises(RuntimeError):
            GpuSlot(1, timeout_s=0)
        mine.close()
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    with GpuSlot(1, timeout_s=0) as s:  # the dead process's lock went with it
        assert s.gpu == 0


def test_slot_without_cuda_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        GpuSlot(1, slot_dir=tmp_path)
    with pytest.raises(ConfigError, match="slot"):
        resolve_device("slot")
    cfg = compose(["dataset=cifar10", "backbone=resnet8", "trainer.device=slot"])
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        Trainer(cfg, tmp_path / "run")


# --- the Trainer's in-memory data and the benchmark ---------------------------------------------------------------


def fake_data(n_train: int = 48, n_test: int = 20):
    g = torch.Generator().manual_seed(0)

    def ds(n):
        return ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                            torch.randint(0, 10, (n,), generator=g), 10, (0.5,) * 3, (0.25,) * 3, "cifar10")

    return ds(n_train), ds(n_test)


def resolved(device: str, steps: int, *overrides: str):
    cfg = compose(["dataset=cifar10", "backbone=resnet8", *overrides])
    validate(cfg)
    return resolve_speed(cfg.trainer, cfg.optim, torch.device(device), steps,
                         METHODS[cfg.method.name].rules_out(cfg.method))


def test_auto_speed_settings_per_device_and_run_length():
    short, long = resolved("cpu", 100), resolved("cpu", CPU_COMPILE_MIN_STEPS)
    assert (short.channels_last, short.fused, short.compile) == (True, True, "none")  # tests and debug runs: eager
    assert long.compile == "default"
    assert resolved("cuda", 100).compile == "reduce-overhead"  # predicted for CUDA, not measured
    assert resolved("cuda", 100, "method=dlb", "method.backward=split").compile == "default"  # CUDA graphs refused
    assert resolved("cuda", 100, "trainer.precision=bf16").bf16 and resolved("cpu", 100, "trainer.precision=bf16").bf16
    assert not short.bf16 and resolved("cpu", 100, "trainer.precision=bf16").describe().startswith("bf16 autocast, ")
    explicit = resolved("cpu", 10**6, "trainer.channels_last=false", "optim.fused=false", "trainer.compile=none")
    assert (explicit.channels_last, explicit.fused, explicit.compile) == (False, False, "none")
    assert explicit.describe() == "fp32, contiguous, plain SGD, eager, eval batch 128, heap kept"
    assert not resolved("cuda", 100).keep_heap and not resolved("cpu", 100, "trainer.keep_heap=false").keep_heap
    faithful = resolved("cuda", 10**6, "trainer.faithful=true")
    assert (faithful.channels_last, faithful.fused, faithful.compile) == (False, False, "none")
    assert faithful.describe() == "faithful (fp32, eager, contiguous, plain SGD), eval batch 1000"
    assert resolved("cpu", 100, "trainer.faithful=true").keep_heap  # the heap changes no number
    # evaluation: cache-sized batches on CPU, large ones on CUDA; an explicit size wins
    assert (short.eval_batch_size, resolved("cuda", 100).eval_batch_size) == (128, 1000)
    assert resolved("cpu", 100, "trainer.eval_batch_size=500").eval_batch_size == 500


@pytest.mark.parametrize("override,key", [("trainer.channels_last=true", "trainer.channels_last"),
                                          ("trainer.compile=default", "trainer.compile"),
                                          ("optim.fused=true", "optim.fused"),
                                          ("trainer.precision=bf16", "trainer.precision")])
def test_faithful_with_a_conflicting_switch_is_one_line_naming_both(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose(["dataset=cifar10", "backbone=resnet8", "trainer.faithful=true", override]))
    assert str(e.value).startswith(f"{key}=") and "trainer.faithful=true" in str(e.value)
    assert "\n" not in str(e.value)
    validate(compose(["dataset=cifar10", "backbone=resnet8", "trainer.faithful=true", "trainer.channels_last=false",
                      "trainer.compile=none", "optim.fused=false"]))  # agreeing switches are fine


def test_faithful_trainer_is_contiguous_eager_and_plain_sgd(tmp_path):
    cfg = compose(["dataset=cifar10", "dataset.root=/nonexistent", "backbone=resnet8", "method=dlb", "debug=tiny",
                   "trainer.batch_size=16", "trainer.faithful=true"])
    t = Trainer(cfg, tmp_path, data=fake_data())
    conv = next(p for p in t.model.parameters() if p.ndim == 4)
    assert t.net is t.model and conv.is_contiguous()  # no compile wrapper, NCHW
    assert t.optimizer.defaults["foreach"] is False and not t.optimizer.defaults["fused"]
    assert re.search(r"\| speed: faithful \(fp32, eager, contiguous, plain SGD\), eval batch \d+, heap kept$",
                     startup_lines(t, False)[0])  # (the kept heap changes no number: faithful keeps it)
    fast = Trainer(compose(["dataset=cifar10", "dataset.root=/nonexistent", "backbone=resnet8", "method=dlb",
                            "debug=tiny", "trainer.batch_size=16"]), tmp_path / "fast", data=fake_data())
    conv = next(p for p in fast.model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and fast.optimizer.defaults["fused"]


def test_faithful_dlb_equals_the_official_loop_bit_for_bit(tmp_path):
    """trainer.faithful=true, 2 epochs of DLB (the last batch carried across the epoch boundary, the lr milestone in
    between): the weights equal those of the official dlb.py loop (model(current view 0), then model(last batch's
    view 1), CE over both + T^2 KL, plain per-parameter SGD with nesterov, MultiStepLR per epoch) on the same
    batches, exactly."""
    import copy

    import torch.nn.functional as F

    from dlb.config import milestones

    cfg = compose(["dataset=cifar10", "dataset.root=/nonexistent", "backbone=resnet8", "method=dlb", "debug=tiny",
                   "trainer.batch_size=16", "trainer.epochs=2", "trainer.faithful=true"])
    t = Trainer(cfg, tmp_path, data=fake_data())
    model = copy.deepcopy(t.model)
    batches = []
    for epoch in range(2):
        t.train_loader.set_epoch(epoch)
        batches.append(list(t.train_loader))
    t.fit()

    o, T, alpha = cfg.optim, cfg.method.T, cfg.method.alpha
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True,
                          weight_decay=o.weight_decay)  # the official call: on CPU torch's per-parameter loop
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(cfg), o.gamma)
    pre = None
    for epoch_batches in batches:
        model.train()
        for b in epoch_batches:
            out = model(b.views[0])
            if pre is None:
                loss = F.cross_entropy(out, b.y)
            else:
                out_pre = model(pre[0].views[1])
                ce = F.cross_entropy(torch.cat((out_pre, out)), torch.cat((pre[0].y, b.y)))
                kd = F.kl_div(F.log_softmax(out_pre / T, dim=1), F.softmax(pre[1].detach() / T, dim=1),
                              reduction="batchmean") * T * T
                loss = ce + alpha * kd
            pre = (b, out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, t.model.state_dict()[k]), k


def test_trainer_takes_in_memory_data(tmp_path):
    cfg = compose(["dataset=cifar10", "dataset.root=/nonexistent", "backbone=resnet8", "method=dlb", "debug=tiny",
                   "trainer.batch_size=16", "dataset.test_subset=10"])
    validate(cfg)
    t = Trainer(cfg, tmp_path, data=fake_data())
    summary = t.fit()
    assert summary["steps"] == 3 and summary["train_size"] == 48 and t.history[0]["test_n"] == 10
    assert summary["world_size"] == 1 and summary["global_batch"] == 16


def test_benchmark_script_writes_its_tables(tmp_path):
    """The benchmark runs end to end at toy size (numbers not checked: they are measurements, not test results)."""
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--backbone", "resnet8", "--methods", "ce",
                        "--batch-size", "16", "--steps", "2", "--warmup", "1", "--repeats", "1", "--train-size", "64",
                        "--test-size", "32", "--pil-workers", "0", "--out", str(out), "--throughput-file",
                        str(tmp_path / "throughput.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    for key in ("step_img_per_s", "loop_img_per_s", "pipeline_efficiency", "saved_activation_bytes", "eval_img_per_s"):
        assert rows["ce"][key] > 0, key
    pil = result["pairs"]["ce/pil"]  # paired in one process: the device loader vs the PIL path
    assert pil["loop_ratio"] > 0 and len(pil["loop_ratio_runs"]) == 1
    assert "| ce |" in out.with_suffix(".md").read_text()
    assert json.loads((tmp_path / "throughput.json").read_text())["img_per_s"].keys() == {"cifar_resnet8/ce"}


TOY = ["--backbone", "resnet8", "--batch-size", "16", "--steps", "2", "--warmup", "1", "--repeats", "1",
       "--train-size", "64", "--test-size", "32", "--pil-workers", "0", "--throughput-file", ""]


def test_benchmark_stopped_by_a_time_limit_keeps_its_finished_rows(tmp_path):
    """A time limit's SIGTERM (scripts/gpu_check.sh runs each stage under `timeout`) leaves the rows measured so
    far on disk, marked incomplete, instead of nothing."""
    out = tmp_path / "bench"
    proc = subprocess.Popen([sys.executable, "scripts/benchmark.py", *TOY, "--methods", "ce,dlb,lsr", "--no-pil",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not out.with_suffix(".json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # after the first row was written, before the run ends
    _, err = proc.communicate(timeout=60)
    result = json.loads(out.with_suffix(".json").read_text())
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert result["complete"] is False and result["machine"]["stopped"] == "SIGTERM"
    assert [r["method"] for r in result["rows"]][:1] == ["ce"] and len(result["rows"]) < 3
    assert "INCOMPLETE" in out.with_suffix(".md").read_text()


def test_benchmark_jobs_total_is_images_over_the_joint_span(tmp_path):
    out = tmp_path / "jobs"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", *TOY, "--jobs", "1,2", "--methods", "ce", "--out",
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [row["jobs"] for row in rows] == [1, 2] and all(row["failed"] == 0 for row in rows)
    assert len(rows[1]["loop_img_per_s"]) == 2 and rows[1]["total_img_per_s"] > 0
    # one job: its images over its own span, i.e. about its own img/s (the span also holds the epoch's bookkeeping)
    assert rows[0]["total_img_per_s"] <= rows[0]["loop_img_per_s"][0] * 1.01


def test_benchmark_keep_heap_runs_each_setting_in_its_own_process(tmp_path):
    """--keep-heap: a row per method and setting, each from fresh processes, with page faults per step counted."""
    out = tmp_path / "heap"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", *TOY, "--keep-heap", "--methods", "ce", "--out",
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(row["method"], row["keep_heap"]) for row in rows] == [("ce", True), ("ce", False)]
    assert all(row["loop_img_per_s"] > 0 and row["minor_faults_per_step_runs"][0] >= 0 for row in rows)
    assert "| ce | true |" in out.with_suffix(".md").read_text()


def test_code_version_without_git_comes_from_the_environment(monkeypatch):
    """A copy without .git (a cluster rsync, the GPU machine) records $DLB_GIT_COMMIT; a checkout its own commit."""
    import dlb.run.record as U

    if (REPO / ".git").exists():
        here = U.git_info()
        assert len(here["git_commit"]) == 40 and isinstance(here["git_dirty"], bool)

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(U.subprocess, "run", no_git)
    monkeypatch.delenv("DLB_GIT_COMMIT", raising=False)
    assert U.git_info() == {"git_commit": "unknown", "git_dirty": False}
    monkeypatch.setenv("DLB_GIT_COMMIT", "abc123")
    assert U.git_info() == {"git_commit": "abc123", "git_dirty": None}


def test_benchmark_eval_batch_sizes_table(tmp_path):
    """--eval-batch-sizes: one row per backbone, img/s per size (the figures behind trainer.eval_batch_size=auto)."""
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--eval-batch-sizes", "8,16", "--backbone", "resnet8",
                        "--repeats", "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    [row] = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["backbone"] == "resnet8" and set(row["img_per_s"]) == {"8", "16"}
    assert all(v > 0 for v in row["img_per_s"].values()) and "| resnet8 |" in out.with_suffix(".md").read_text()


def test_benchmark_vs_official_plumbing(tmp_path):
    """--vs-official end to end with a stand-in for the official scripts (the official code is not in this repo):
    every contender runs for 1 and 3 epochs and gets a row, with its ratios against the official rows."""
    official = tmp_path / "official"
    official.mkdir()
    for script in ("dlb.py", "base.py"):  # accepts the official command line, trains nothing
        (official / script).write_text("import sys, time\nassert '--epoch' in sys.argv\ntime.sleep(0.05 * int(sys.argv[sys.argv.index('--epoch') + 1]))\n")
    out = tmp_path / "vs"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--vs-official", str(official), "--methods", "ce",
                        "--train-size", "32", "--test-size", "16", "--repeats", "1", "--pil-workers", "0",
                        "--contenders", "official,official-workers,ours", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [row["contender"] for row in rows] == ["official", "official-workers", "ours"]
    assert rows[0]["speedup_vs_official"] == 1.0 and all(row["speedup_vs_official_few_workers"] for row in rows)
    bad = subprocess.run([sys.executable, "scripts/benchmark.py", "--vs-official", str(official), "--contenders", "ours"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "official included" in bad.stderr


# --- bf16 autocast -----------------------------------------------------------------------------------------------


def test_soft_losses_are_computed_in_fp32_under_cpu_bf16_autocast():
    """CPU autocast runs (log_)softmax in the input's dtype: the methods' soft losses take logits.float(), so under
    trainer.precision=bf16 they equal the fp32 formula on the same (bf16) logits, not a bf16 approximation of it."""
    from dlb.methods.base import soft_target_ce
    from dlb.methods.dlb import last_batch_kd

    g = torch.Generator().manual_seed(0)
    student = (torch.randn(16, 10, generator=g) * 4).bfloat16()
    teacher, targets = torch.randn(16, 10, generator=g) * 4, torch.softmax(torch.randn(16, 10, generator=g), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = last_batch_kd(student, teacher, 3.0), soft_target_ce(student, targets)
    want = last_batch_kd(student.float(), teacher, 3.0), soft_target_ce(student.float(), targets)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the rounding this avoids (what the test would catch)
        bf16_kd = torch.nn.functional.log_softmax(student / 3.0, dim=1)
    assert bf16_kd.dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["ce", "dlb", "cskd", "pskd", "lsr", "tfkd_reg", "ddgsd"])
def test_bf16_autocast_on_cpu_trains_every_method_close_to_fp32(method, tmp_path):
    """trainer.precision=bf16 on a CPU: the forwards run under bf16 autocast, the loss terms stay fp32, and three steps
    give losses close to fp32's from the same start."""
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = compose(["dataset=cifar10", "backbone=resnet8", f"method={method}", "trainer.device=cpu",
                       "trainer.batch_size=16", f"trainer.precision={precision}"])
        validate(cfg)
        t = Trainer(cfg, tmp_path / precision, data=fake_data(64, 16))
        assert t.speed.bf16 == (precision == "bf16")
        t.model.train()
        t.method.train()
        t.train_loader.set_epoch(0)
        steps = [t.train_step(batch) for batch, _ in zip(t.train_loader, range(3))]
        assert all(v.dtype == torch.float32 for _, _, terms in steps for v in terms.values())
        losses[precision] = torch.stack([loss.detach() for _, loss, _ in steps])
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=5e-2, atol=5e-2)


# --- the kept heap -----------------------------------------------------------------------------------------------


def test_keep_heap_sets_glibcs_malloc_and_the_speed_line_says_whether_it_took(tmp_path, monkeypatch):
    import platform

    from dlb import build as build_mod
    from dlb.device.speed import keep_heap

    if platform.libc_ver()[0] == "glibc":
        assert keep_heap()
    cfg = compose(["dataset=cifar10", "backbone=resnet8", "trainer.device=cpu"])
    monkeypatch.setattr(build_mod, "keep_heap", lambda: False)  # a C library without mallopt
    t = Trainer(cfg, tmp_path / "run", data=fake_data())
    assert not t.speed.keep_heap and "heap" not in t.speed.describe()
    with pytest.raises(ConfigError, match="trainer.keep_heap"):
        validate(compose(["trainer.keep_heap=sometimes"]))
