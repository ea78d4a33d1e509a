"""The baselines (LSR, Tf-KD self/reg, CS-KD, PS-KD, DDGSD, DDGSD+DLB): golden losses on fixed tensors computed by
hand from each official formula (quirks included), CS-KD's batch order, PS-KD's memory, training smoke runs,
Tf-KD's teacher lookup (exact resume: tests/test_train.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dlb.errors import ConfigError
from dlb.data.loader import Batch, DeviceLoader
from dlb.methods import METHODS, build_method
from dlb.methods.cskd import ClassPairOrder
from dlb.methods.ddgsd import features_and_logits
from dlb.methods.tfkd import TfKDSelf
from dlb.run.teacher import search_root
from dlb.train import load_config
from dlb.trainer import Trainer
from test_train import tiny_cfg

# Two samples, three classes. Every "model" below replays rows of these tables: row r of FEATS/LOGITS is what the
# model gives an input whose pixels all hold the value r.
LOGITS = [[1.0, 2.0, 0.0], [0.0, 1.0, 3.0],  # 0-1: view0 (the batch)
          [0.5, 1.5, -1.0], [2.0, 0.0, 1.0],  # 2-3: view1, or CS-KD's partners
          [0.2, -1.0, 0.3], [1.5, 0.5, -0.5],  # 4-5: the next batch's view0 / PS-KD's second epoch
          [0.0, 0.0, 2.0], [-1.0, 1.0, 0.5]]  # 6-7: the next batch's view1
FEATS = [[0.5, 1.0], [1.5, -0.5], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
TEACHER = [[0.5, 1.5, -1.0], [2.0, 0.0, 1.0]]  # Tf-KD self: the frozen teacher's logits for rows 0-1
Y = [0, 2]
K = 3


# --- by-hand arithmetic (pure Python) ---------------------------------------------------------------------------
def softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl_sum(p_rows, q_rows):
    """sum_i sum_k p_ik (log p_ik - log q_ik), from probability rows."""
    return sum(p * (math.log(p) - math.log(q)) for pr, qr in zip(p_rows, q_rows) for p, q in zip(pr, qr))


def soft_ce(rows, targets):
    return sum(-sum(t * math.log(q) for t, q in zip(tr, softmax(r))) for r, tr in zip(rows, targets)) / len(rows)


def onehot(y):
    return [1.0 if k == y else 0.0 for k in range(K)]


def ce(rows, labels):
    return soft_ce(rows, [onehot(y) for y in labels])


# --- replay models ------------------------------------------------------------------------------------------------
class _Replay(nn.Module):
    """forward_features gives the row's [features, logits] (so one forward yields both, like the cifar_* nets);
    forward_head(pre_logits=True) the features, forward_head the logits. A parameter makes losses differentiable."""

    def __init__(self, logits=LOGITS, feats=FEATS):
        super().__init__()
        self.table = torch.cat([torch.tensor(feats), torch.tensor(logits)], 1)
        self.d = len(feats[0])
        self.w = nn.Parameter(torch.ones(()))

    def forward_features(self, x):
        return self.table[x[:, 0, 0, 0].long()] * self.w

    def forward_head(self, f, pre_logits=False):
        return f[:, :self.d] if pre_logits else f[:, self.d:]

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def rows(*ids):
    """Images whose pixels hold their table row."""
    return torch.tensor(ids, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()


def batch(view_rows, y=Y, idx=None, **kw):
    return Batch(views=[rows(*r) for r in view_rows], y=torch.tensor(y), idx=idx, **kw)


def total(losses):
    return sum(v.item() for v in losses.values())


# --- golden losses ------------------------------------------------------------------------------------------------
def test_lsr_golden():
    eps = 0.1
    target = [[1 - eps if k == y else eps / (K - 1) for k in range(K)] for y in Y]
    logits, losses = METHODS["lsr"](eps=eps).training_step(_Replay(), batch([[0, 1]]))
    assert torch.equal(logits, torch.tensor(LOGITS[:2]))
    assert losses["ce"].item() == pytest.approx(soft_ce(LOGITS[:2], target), abs=1e-6)
    assert losses["ce"].item() == pytest.approx(0.9137260, abs=1e-6)  # frozen


def test_lsr_under_cutmix_mixes_the_smoothed_targets():
    lam, y_mix = [0.75, 0.5], [1, 2]
    b = batch([[0, 1]], y_mix=torch.tensor(y_mix), lam=torch.tensor(lam))
    smoothed = lambda y: [0.9 if k == y else 0.05 for k in range(K)]  # noqa: E731
    target = [[a * s + (1 - a) * m for s, m in zip(smoothed(y), smoothed(ym))] for a, y, ym in zip(lam, Y, y_mix)]
    _, losses = METHODS["lsr"](eps=0.1).training_step(_Replay(), b)
    assert losses["ce"].item() == pytest.approx(soft_ce(LOGITS[:2], target), abs=1e-6)


@pytest.mark.parametrize("reduction,frozen", [("official", 12.129923), ("batchmean", 36.310897)])
def test_tfkd_self_golden(reduction, frozen):
    """(1-a) CE + a T^2 multiplier KL(teacher/T || student/T), KL / (B*K) (official nn.KLDivLoss()) or / B."""
    alpha, T, mult = 0.95, 6.0, 50.0
    method = TfKDSelf(alpha=alpha, T=T, multiplier=mult, kl_reduction=reduction,
                      teacher=_Replay(logits=TEACHER, feats=FEATS[:2]))
    _, losses = method.training_step(_Replay(), batch([[0, 1]]))
    kl = kl_sum([softmax(r, T) for r in TEACHER], [softmax(r, T) for r in LOGITS[:2]])
    kl /= len(Y) * K if reduction == "official" else len(Y)
    assert losses["ce"].item() == pytest.approx((1 - alpha) * ce(LOGITS[:2], Y), abs=1e-6)
    assert losses["kd"].item() == pytest.approx(alpha * T * T * mult * kl, rel=1e-5)
    assert total(losses) == pytest.approx(frozen, rel=1e-5)


@pytest.mark.parametrize("reduction,soften,frozen", [("official", "official", 2.4096150),
                                                     ("batchmean", "official", 5.8091381),
                                                     ("official", "clean", 8.3790480)])
def test_tfkd_reg_golden(reduction, soften, frozen):
    """official: a * multiplier * KL(softmax(u/T) || softmax(z)) (u: probabilities, student unscaled, no T^2);
    clean: a * multiplier * T^2 * KL(softmax(log(u)/T) || softmax(z/T))."""
    alpha, T, mult, cp = 0.1, 20.0, 100.0, 0.99
    u = [[cp if k == y else (1 - cp) / (K - 1) for k in range(K)] for y in Y]
    _, losses = METHODS["tfkd_reg"](alpha=alpha, T=T, multiplier=mult, correct_prob=cp,
                                    kl_reduction=reduction, soften=soften).training_step(_Replay(), batch([[0, 1]]))
    if soften == "official":
        kl = kl_sum([softmax(r, T) for r in u], [softmax(r) for r in LOGITS[:2]])
    else:
        kl = T * T * kl_sum([softmax([math.log(v) for v in r], T) for r in u], [softmax(r, T) for r in LOGITS[:2]])
    kl /= len(Y) * K if reduction == "official" else len(Y)
    assert losses["ce"].item() == pytest.approx((1 - alpha) * ce(LOGITS[:2], Y), abs=1e-6)
    # float32 KL between near-uniform distributions (T=20) loses a few digits to cancellation
    assert losses["kd"].item() == pytest.approx(alpha * mult * kl, rel=1e-4)
    assert total(losses) == pytest.approx(frozen, rel=1e-4)


def test_tfkd_reg_official_teacher_is_nearly_uniform():
    """The quirk pinned above: softmax of a probability vector / 20 puts ~1/K on the true class, not 0.99."""
    u = torch.tensor([[0.99, 0.005, 0.005]])
    assert torch.softmax(u / 20, 1)[0, 0].item() == pytest.approx(softmax([0.99, 0.005, 0.005], 20)[0])
    assert torch.softmax(u / 20, 1)[0, 0].item() < 0.35


def test_cskd_golden():
    """CE on the first half + w T^2 sum_i KL(softmax(partner_i/T) || softmax(sample_i/T)) / B; partners: rows 2-3."""
    T, w = 4.0, 1.0
    b = Batch(views=[rows(0, 1, 2, 3)], y=torch.tensor(Y + Y))
    model = _Replay()
    logits, losses = METHODS["cskd"](T=T, kd_weight=w).training_step(model, b)
    assert torch.equal(logits, torch.tensor(LOGITS[:2]))  # the first half only
    kd = w * T * T * kl_sum([softmax(r, T) for r in LOGITS[2:4]], [softmax(r, T) for r in LOGITS[:2]]) / 2
    assert losses["ce"].item() == pytest.approx(ce(LOGITS[:2], Y), abs=1e-6)
    assert losses["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert total(losses) == pytest.approx(1.5624643, abs=1e-6)  # frozen
    sum(losses.values()).backward()
    assert model.w.grad is not None


def test_cskd_partner_side_gets_no_gradient():
    model = _Replay()
    b = Batch(views=[rows(0, 1, 2, 3)], y=torch.tensor(Y + Y))
    _, losses = METHODS["cskd"]().training_step(model, b)
    losses["kd"].backward()
    g_both = model.w.grad.item()
    # Recompute with the partner logits as constants: the gradient must be the same.
    model.w.grad = None
    z = model(rows(0, 1))
    zp = torch.tensor(LOGITS[2:4])
    kl = torch.nn.functional.kl_div(torch.log_softmax(z / 4, 1), torch.softmax(zp / 4, 1), reduction="sum") * 16 / 2
    kl.backward()
    assert g_both == pytest.approx(model.w.grad.item(), abs=1e-6)


def test_pskd_golden_two_epochs_and_memory():
    """Epoch 0 (of E=4): target = onehot, memory <- softmax. Epoch 1: alpha_t = 0.8*2/4, target mixes the memory."""
    idx = torch.tensor([3, 1])  # dataset rows of the two samples
    method = METHODS["pskd"](alpha_T=0.8, train_size=5, num_classes=K)
    method.on_epoch_start(0, 4)
    assert method.alpha_t == pytest.approx(0.2)
    _, losses = method.training_step(_Replay(), batch([[0, 1]], idx=idx))
    assert losses["ce"].item() == pytest.approx(ce(LOGITS[:2], Y), abs=1e-6)
    for i, r in zip(idx.tolist(), LOGITS[:2]):
        assert method.memory[i].tolist() == pytest.approx(softmax(r), abs=1e-6)
    assert method.memory[[0, 2, 4]].abs().sum() == 0  # rows not seen stay empty

    method.on_epoch_start(1, 4)
    a = 0.8 * 2 / 4
    _, losses = method.training_step(_Replay(), batch([[4, 5]], idx=idx))
    target = [[(1 - a) * o + a * p for o, p in zip(onehot(y), softmax(r))] for y, r in zip(Y, LOGITS[:2])]
    assert losses["ce"].item() == pytest.approx(soft_ce(LOGITS[4:6], target), abs=1e-6)
    assert losses["ce"].item() == pytest.approx(1.7610758, abs=1e-6)  # frozen
    for i, r in zip(idx.tolist(), LOGITS[4:6]):  # now the second epoch's predictions
        assert method.memory[i].tolist() == pytest.approx(softmax(r), abs=1e-6)

    other = METHODS["pskd"](alpha_T=0.8, train_size=5, num_classes=K)
    other.load_method_state(method.method_state(), "cpu")
    assert torch.equal(other.memory, method.memory)


def test_pskd_row_never_written_falls_back_to_onehot():
    """Epoch 1, one image seen in epoch 0 (row 3) and one that sat out epoch 0 (row 0, as a DDP leftover does):
    the unseen one's target is its one-hot, not (1 - alpha_t) * onehot (a target summing to 1 - alpha_t)."""
    method = METHODS["pskd"](alpha_T=0.8, train_size=5, num_classes=K)
    method.on_epoch_start(0, 4)
    method.training_step(_Replay(), batch([[0]], y=Y[:1], idx=torch.tensor([3])))
    method.on_epoch_start(1, 4)
    a = 0.8 * 2 / 4
    _, losses = method.training_step(_Replay(), batch([[4, 5]], idx=torch.tensor([3, 0])))
    target = [[(1 - a) * o + a * p for o, p in zip(onehot(Y[0]), softmax(LOGITS[0]))], onehot(Y[1])]
    assert losses["ce"].item() == pytest.approx(soft_ce(LOGITS[4:6], target), abs=1e-6)


def test_ddgsd_golden():
    """CE mean over both views + w T^2 (KL(sg p_b || p_a) + KL(sg p_a || p_b)) batchmean
    + m ||mean f_a - mean f_b||^2."""
    T, w, m = 4.0, 1.0, 5e-4
    logits, losses = METHODS["ddgsd"](T=T, kl_weight=w, mmd_weight=m).training_step(_Replay(), batch([[0, 1], [2, 3]]))
    assert torch.equal(logits, torch.tensor(LOGITS[:2]))
    pa, pb = [softmax(r, T) for r in LOGITS[0:2]], [softmax(r, T) for r in LOGITS[2:4]]
    mean = lambda f, d: sum(r[d] for r in f) / len(f)  # noqa: E731
    mmd = sum((mean(FEATS[0:2], d) - mean(FEATS[2:4], d)) ** 2 for d in range(2))
    assert losses["ce"].item() == pytest.approx(ce(LOGITS[:4], Y + Y), abs=1e-6)
    assert losses["kl"].item() == pytest.approx(w * T * T * (kl_sum(pb, pa) + kl_sum(pa, pb)) / 2, abs=1e-5)
    assert losses["mmd"].item() == pytest.approx(m * mmd, abs=1e-9)
    assert total(losses) == pytest.approx(2.5736345, abs=1e-5)  # frozen


def test_ddgsd_dlb_golden_two_steps():
    """Step 2 adds alpha T^2 KL(sg(view0 logits of S_1 at step 1) || f(view1 of S_1) now), batchmean, T=3."""
    method = METHODS["ddgsd_dlb"](T=4.0, kl_weight=1.0, mmd_weight=5e-4, dlb_T=3.0, dlb_alpha=0.5)
    model = _Replay()
    _, first = method.training_step(model, batch([[0, 1], [2, 3]]))
    assert set(first) == {"ce", "kl", "mmd"}  # the run's first step has no previous batch
    assert torch.equal(method.prev["x1"], rows(2, 3)) and torch.equal(method.prev["logits"], torch.tensor(LOGITS[:2]))
    logits, losses = method.training_step(model, batch([[4, 5], [6, 7]], y=[1, 1]))
    assert torch.equal(logits, torch.tensor(LOGITS[4:6]))
    T = 3.0
    kd = 0.5 * T * T * kl_sum([softmax(r, T) for r in LOGITS[0:2]], [softmax(r, T) for r in LOGITS[2:4]]) / 2
    assert losses["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert losses["ce"].item() == pytest.approx(ce(LOGITS[4:8], [1, 1, 1, 1]), abs=1e-6)
    assert total(losses) == pytest.approx(3.3945717, abs=1e-5)  # frozen
    other = METHODS["ddgsd_dlb"]()
    other.load_method_state(method.method_state(), "cpu")
    assert torch.equal(other.prev["x1"], rows(6, 7)) and torch.equal(other.prev["logits"], torch.tensor(LOGITS[4:6]))


def _method_and_batch(name):
    """A fresh method and a matching batch (views, idx, doubled rows for CS-KD) for the replay model."""
    if name == "tfkd_self":
        return TfKDSelf(teacher=_Replay()), dict(view_rows=[[0, 1]])
    if name == "pskd":
        m = METHODS["pskd"](train_size=2, num_classes=K)
        m.on_epoch_start(1, 4)
        m.memory.copy_(torch.softmax(torch.tensor(LOGITS[6:8]), 1))
        return m, dict(view_rows=[[0, 1]], idx=torch.tensor([0, 1]))
    if name == "cskd":
        return METHODS["cskd"](), dict(view_rows=[[0, 1, 2, 3]], y=Y + Y)
    return METHODS[name](), dict(view_rows=[[0, 1], [2, 3]][:METHODS[name].num_views])


@pytest.mark.parametrize("name", ["ce", "dlb", "lsr", "tfkd_self", "tfkd_reg", "cskd", "pskd", "ddgsd", "ddgsd_dlb"])
def test_cutmix_with_lam_one_is_the_unmixed_loss(name):
    """Every method reads CutMix targets (y_mix, lam); with lam = 1 the partner must not matter."""
    plain_method, kw = _method_and_batch(name)
    _, plain = plain_method.training_step(_Replay(), batch(**kw))
    n = len(kw.get("y", Y))
    mixed_method, kw = _method_and_batch(name)
    _, mixed = mixed_method.training_step(_Replay(), batch(**kw, y_mix=torch.full((n,), 1), lam=torch.ones(n)))
    assert set(mixed) == set(plain)
    for k in plain:
        assert mixed[k].item() == pytest.approx(plain[k].item(), abs=1e-6), k


# --- CS-KD batch order --------------------------------------------------------------------------------------------
def _dataset(labels):
    from dlb.data.datasets import ArrayDataset

    n = len(labels)
    images = torch.arange(n * 3 * 4 * 4).remainder(256).to(torch.uint8).view(n, 3, 4, 4)
    return ArrayDataset(images, labels, int(labels.max()) + 1, (0.5,) * 3, (0.25,) * 3, "toy")


def test_cskd_batch_order_pairs_same_class_and_covers_the_epoch():
    g = torch.Generator().manual_seed(0)
    noisy = torch.randint(0, 4, (50,), generator=g)  # the labels the model trains on (noisy ones under label noise)
    order = ClassPairOrder(noisy, batch_size=8)
    batches = order(0, torch.Generator().manual_seed(123))
    assert [len(b) for b in batches] == [16] * 6 + [4]  # 50 = 6 x 8 + 2, not drop_last: the last holds 2 + 2
    firsts = torch.cat([b[: len(b) // 2] for b in batches])
    partners = torch.cat([b[len(b) // 2:] for b in batches])
    assert torch.equal(firsts.sort().values, torch.arange(50))  # every sample once per epoch
    assert torch.equal(noisy[partners], noisy[firsts])  # same class under the given labels
    assert len(set(partners.tolist())) > 20  # drawn, not a fixed map
    # A pure function of the generator's seed, which the loader derives from (seed, epoch).
    again = order(0, torch.Generator().manual_seed(123))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = order(0, torch.Generator().manual_seed(124))
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))


def test_cskd_partner_can_be_the_sample_itself():
    labels = torch.tensor([0, 1, 1, 2, 2, 2])  # class 0 has one member: its partner is itself
    batches = ClassPairOrder(labels, 6)(0, torch.Generator().manual_seed(0))
    first, partner = batches[0][:6], batches[0][6:]
    assert partner[first == 0].item() == 0


def test_cskd_order_through_the_device_loader():
    labels = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    ds = _dataset(labels)
    method = METHODS["cskd"]()

    def epoch_batches(seed, epoch):
        dl = DeviceLoader(ds, batch_size=8, train=True, device="cpu", seed=seed, augment="none", crop_size=4,
                          batch_order=method.batch_order(ds.labels, 8))
        dl.set_epoch(epoch)
        return list(dl)

    bs = epoch_batches(5, 0)
    assert [len(b.y) for b in bs] == [16, 16, 8]
    for b in bs:
        half = len(b.y) // 2
        assert torch.equal(b.y[:half], b.y[half:])
    assert [b.idx.tolist() for b in bs] == [b.idx.tolist() for b in epoch_batches(5, 0)]
    assert [b.idx.tolist() for b in bs] != [b.idx.tolist() for b in epoch_batches(5, 1)]


# --- Tf-KD teacher ------------------------------------------------------------------------------------------------
def test_tfkd_teacher_stays_frozen_in_eval_mode_and_out_of_the_state():
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.BatchNorm1d(3))
    method = TfKDSelf(teacher=teacher)
    method.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    running = teacher[2].running_mean.clone()
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    _, losses = method.training_step(student, Batch(views=[torch.randn(4, 3, 2, 2)], y=torch.tensor([0, 1, 2, 0])))
    sum(losses.values()).backward()
    assert torch.equal(teacher[2].running_mean, running) and teacher[1].weight.grad is None
    assert method.method_state() == {"teacher_path": None}


def test_search_root(tmp_path):
    run = tmp_path / "outputs" / "cifar10" / "cifar_resnet8" / "tfkd_self" / "seed0"
    assert search_root(run, None) == (tmp_path / "outputs").resolve()
    sweep = tmp_path / "sweeps" / "table1"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    assert search_root(sweep / "backbone=resnet8,method=tfkd_self,seed=0", None) == sweep.resolve()
    assert search_root(tmp_path / "a" / "b" / "c", None) == (tmp_path / "a").resolve()
    assert search_root(run, str(tmp_path / "elsewhere")) == (tmp_path / "elsewhere").resolve()


# --- training through the Trainer ---------------------------------------------------------------------------------
# Two steps of 8 and one eval batch: the runs check wiring, not learning (the CPU budget of the suite is small).
FAST = ["trainer.batch_size=8", "trainer.eval_batch_size=8", "trainer.limit_train_batches=2",
        "trainer.limit_eval_batches=1"]


@pytest.mark.parametrize("method", ["lsr", "tfkd_reg", "cskd", "pskd", "ddgsd", "ddgsd_dlb"])
def test_one_epoch_smoke(fake_cifar, tmp_path, method):
    t = Trainer(tiny_cfg(fake_cifar, f"method={method}", *FAST), tmp_path / "run")
    summary = t.fit()
    assert summary["status"] == "completed" and summary["steps"] == 2
    row = t.history[0]
    assert math.isfinite(row["train_loss"]) and row["train_images"] == 16  # CS-KD: accuracy on the 8 samples only
    if method == "ddgsd_dlb":  # the second step has the last-batch term
        assert row["train_kd"] > 0


def test_tfkd_self_finds_the_ce_teacher_or_says_how_to_train_it(fake_cifar, tmp_path):
    root = tmp_path / "outputs"
    cell = root / "cifar10" / "cifar_resnet8"
    with pytest.raises(ConfigError, match=r"(?s)found no .*python -m dlb\.train dataset=cifar10 backbone=resnet8 "
                                          r"method=ce seed=0 .*hydra\.run\.dir=") as refused:
        Trainer(tiny_cfg(fake_cifar, "method=tfkd_self", *FAST), cell / "tfkd_self" / "seed0")
    # every value that sets this run apart from the defaults, so that the printed command trains the teacher it finds
    assert all(o in str(refused.value) for o in FAST if "eval_batch_size" not in o), str(refused.value)  # (free key)
    Trainer(tiny_cfg(fake_cifar, "method=ce", *FAST), cell / "ce" / "seed0").fit()
    t = Trainer(tiny_cfg(fake_cifar, "method=tfkd_self", *FAST), cell / "tfkd_self" / "seed0")
    assert t.method.teacher_path == str((cell / "ce" / "seed0" / "checkpoints" / "best.pt").resolve())
    teacher_weights = torch.load(cell / "ce" / "seed0" / "checkpoints" / "best.pt", weights_only=True)["model"]
    for k, v in t.method.teacher.state_dict().items():
        assert torch.equal(v, teacher_weights[k]), k
    summary = t.fit()
    assert summary["status"] == "completed" and t.history[0]["train_kd"] > 0
    written = json.loads((cell / "tfkd_self" / "seed0" / "summary.json").read_text())
    assert written["method"] == "tfkd_self" and written["method_info"]["teacher"] == t.method.teacher_path
    config = json.loads((cell / "tfkd_self" / "seed0" / "config.json").read_text())
    assert config["method"]["teacher"] == "auto" and config["method_info"]["teacher"] == t.method.teacher_path
    # Another seed has no teacher yet.
    with pytest.raises(ConfigError, match="seed=1"):
        Trainer(tiny_cfg(fake_cifar, "method=tfkd_self", "seed=1", *FAST), cell / "tfkd_self" / "seed1")


def test_tfkd_self_teacher_as_a_path(fake_cifar, tmp_path):
    Trainer(tiny_cfg(fake_cifar, "method=ce", *FAST), tmp_path / "ce").fit()
    t = Trainer(tiny_cfg(fake_cifar, "method=tfkd_self", f"method.teacher={tmp_path / 'ce'}", *FAST), tmp_path / "kd")
    assert t.method.teacher_path.endswith("best.pt")
    with pytest.raises(ConfigError, match="method.teacher"):
        Trainer(tiny_cfg(fake_cifar, "method=tfkd_self", f"method.teacher={tmp_path / 'nope.pt'}"), tmp_path / "x")


def test_features_and_logits_of_a_cifar_net_and_a_timm_net():
    import timm

    import dlb.models  # noqa: F401

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("cifar_resnet8", "resnet10t"):
        model = timm.create_model(name, num_classes=5).eval()
        feats, logits = features_and_logits(model, x)
        assert feats.shape == (2, model.num_features) and torch.allclose(logits, model(x), atol=1e-5), name


def test_build_method_context_and_config_checks():
    from omegaconf import OmegaConf

    m = build_method(OmegaConf.create({"name": "pskd", "alpha_T": 0.5}), num_classes=7, train_size=11)
    assert m.memory.shape == (11, 7) and m.alpha_T == 0.5
    for name, key, bad in [("lsr", "eps", 1.0), ("cskd", "T", 0.0), ("pskd", "alpha_T", 1.5), ("ddgsd", "mmd_weight", -1.0),
                           ("ddgsd_dlb", "dlb_T", 0.0), ("tfkd_reg", "correct_prob", 1.0)]:
        cfg = OmegaConf.structured(METHODS[name].Config)
        cfg[key] = bad
        with pytest.raises(ConfigError, match=f"method.{key}"):
            METHODS[name].validate_config(cfg)
    for name, key, bad in [("tfkd_reg", "soften", "nope"), ("tfkd_self", "kl_reduction", "x")]:  # Choice fields
        with pytest.raises(ConfigError, match=rf"^method\.{key}={bad}: .*use one of official, "):
            load_config([f"method={name}", f"method.{key}={bad}"])
