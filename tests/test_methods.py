"""Golden-value tests: each method's objective on fixed tensors equals the spec's formula computed by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlb.data.loader import Batch
from dlb.methods import METHODS, build_method
from dlb.methods.dlb import DLB, last_batch_kd

TEACHER = [[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]]  # z_{t-1}: logits of view0(S_{t-1}) one step earlier
STUDENT = [[0.5, 1.0, 0.0], [2.0, 0.0, 1.0]]  # zhat_t: logits of view1(S_{t-1}) now
CURRENT = [[0.2, -1.0, 0.3], [1.5, 0.5, -0.5], [0.0, 0.0, 2.0]]  # z_t: logits of view0(S_t)
Y_PREV, Y_CUR = [1, 2], [0, 0, 2]


def softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl_by_hand(teacher, student, T):
    """T^2 * mean_i sum_k p_ik (log p_ik - log q_ik)."""
    total = 0.0
    for zt, zs in zip(teacher, student):
        p, q = softmax(zt, T), softmax(zs, T)
        total += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
    return T * T * total / len(teacher)


def ce_by_hand(rows, labels):
    return sum(-math.log(softmax(r)[y]) for r, y in zip(rows, labels)) / len(rows)


def test_kd_term_matches_hand_formula():
    got = last_batch_kd(torch.tensor(STUDENT), torch.tensor(TEACHER), T=3.0)
    assert got.item() == pytest.approx(kl_by_hand(TEACHER, STUDENT, 3.0), abs=1e-6)
    assert got.item() == pytest.approx(0.7225201, abs=1e-6)  # the same formula, evaluated once and frozen


class _Replay(nn.Module):
    """A 'model' that returns preset logits for preset inputs, so the method's objective is tested alone."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.table[int(x[0, 0, 0, 0])] * self.w


def _views(tag0, tag1, n):
    return [torch.full((n, 3, 2, 2), float(tag0)), torch.full((n, 3, 2, 2), float(tag1))]


def test_dlb_objective_golden():
    """Second step: CE over [zhat_t; z_t] with their labels + alpha * T^2 * KL(z_{t-1} || zhat_t)."""
    table = {0: torch.tensor(TEACHER), 1: torch.tensor(STUDENT), 2: torch.tensor(CURRENT), 3: torch.zeros(3, 3)}
    model = _Replay(table)
    method = DLB(T=3.0, alpha=0.5)
    # Step 1 on S_{t-1}: view0 -> TEACHER logits, view1 tagged 1 -> STUDENT logits when replayed at step 2.
    logits, losses = method.training_step(model, Batch(views=_views(0, 1, 2), y=torch.tensor(Y_PREV)))
    assert set(losses) == {"ce"}  # the run's very first step has no previous batch
    assert losses["ce"].item() == pytest.approx(ce_by_hand(TEACHER, Y_PREV), abs=1e-6)
    # Step 2 on S_t.
    logits, losses = method.training_step(model, Batch(views=_views(2, 3, 3), y=torch.tensor(Y_CUR)))
    assert torch.equal(logits, torch.tensor(CURRENT))
    ce = ce_by_hand(STUDENT + CURRENT, Y_PREV + Y_CUR)  # mean over all 5 rows of both halves
    kd = 0.5 * kl_by_hand(TEACHER, STUDENT, 3.0)
    assert losses["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert losses["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert (losses["ce"] + losses["kd"]).item() == pytest.approx(1.0838888, abs=1e-6)  # frozen value of ce + kd


def test_dlb_teacher_side_gets_no_gradient():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    last_batch_kd(student, teacher, 3.0).backward()
    assert teacher.grad is None and student.grad is not None


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 5))


def test_two_real_dlb_steps_use_previous_logits_as_target():
    """Step 2's KL target is exactly step 1's logits for the same samples (parameters one SGD step older)."""
    model = _small_net().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    b1 = Batch(views=[torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)], y=torch.tensor([0, 1, 2, 3]))
    b2 = Batch(views=[torch.randn(3, 3, 8, 8, generator=g) for _ in range(2)], y=torch.tensor([4, 0, 1]))
    method = DLB(T=3.0, alpha=1.0)

    logits1, losses1 = method.training_step(model, b1)
    opt.zero_grad()
    sum(losses1.values()).backward()
    opt.step()
    assert torch.equal(method.prev["logits"], logits1.detach())

    logits2, losses2 = method.training_step(model, b2)
    with torch.no_grad():  # train mode: BatchNorm uses the batch's statistics, so this equals the method's forward
        zhat = model(b1.views[1])
        z1_now = model(b1.views[0])
    assert not torch.allclose(z1_now, logits1)  # the model did change: the target is the *old* logits
    assert losses2["kd"].item() == pytest.approx(last_batch_kd(zhat, logits1, 3.0).item(), abs=1e-6)
    want_ce = F.cross_entropy(torch.cat([zhat, logits2.detach()]), torch.cat([b1.y, b2.y]))
    assert losses2["ce"].item() == pytest.approx(want_ce.item(), abs=1e-6)
    assert torch.equal(method.prev["logits"], logits2.detach()) and torch.equal(method.prev["x1"], b2.views[1])


def test_dlb_state_round_trip():
    method = DLB()
    model = _small_net()
    method.training_step(model, Batch(views=[torch.randn(2, 3, 8, 8)] * 2, y=torch.tensor([0, 1])))
    state = method.method_state()
    other = DLB()
    other.load_method_state(state, "cpu")
    for k in ("x1", "y", "logits"):
        assert torch.equal(other.prev[k], method.prev[k])
    fresh = DLB()
    fresh.load_method_state(DLB().method_state(), "cpu")
    assert fresh.prev is None


def test_ce_golden():
    model = _Replay({2: torch.tensor(CURRENT)})
    logits, losses = METHODS["ce"]().training_step(model, Batch(views=_views(2, 2, 3)[:1], y=torch.tensor(Y_CUR)))
    assert losses["ce"].item() == pytest.approx(ce_by_hand(CURRENT, Y_CUR), abs=1e-6)


def test_build_method_passes_config_fields():
    from omegaconf import OmegaConf

    m = build_method(OmegaConf.create({"name": "dlb", "T": 4.0, "alpha": 0.5}), num_classes=10)
    assert isinstance(m, DLB) and m.T == 4.0 and m.alpha == 0.5 and m.num_views == 2


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _two_batches(mixed: bool):
    """S_{t-1} (4 images) and S_t (3 images); under `mixed` S_t is CutMix-ed (partner labels, per-sample lam)."""
    g = torch.Generator().manual_seed(3)
    first = Batch(views=[torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)], y=torch.tensor([0, 1, 2, 3]))
    second = Batch(views=[torch.randn(3, 3, 8, 8, generator=g) for _ in range(2)], y=torch.tensor([4, 0, 1]))
    if mixed:
        second.y_mix, second.lam = torch.tensor([1, 4, 4]), torch.tensor([0.25, 0.5, 1.0])
    return first, second


@pytest.mark.parametrize("mixed", [False, True])
def test_split_backward_gives_the_joint_gradient_and_losses(mixed):
    """method.backward=split backpropagates the current half's CE share inside the step: the step's losses, the
    accumulated gradient and the BatchNorm statistics equal the official joint backward's (float rounding apart)."""
    got = {}
    for mode in ("joint", "split"):
        model, method = _bn_net(), DLB(T=3.0, alpha=1.0, backward=mode)
        first, second = _two_batches(mixed)
        sum(method.training_step(model, first)[1].values()).backward()  # step 1: no last batch, plain CE
        model.zero_grad()
        logits, losses = method.training_step(model, second)
        sum(losses.values()).backward()
        got[mode] = (logits.detach(), {k: v.detach() for k, v in losses.items()},
                     [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()])
    (lj, loss_j, grad_j, buf_j), (ls, loss_s, grad_s, buf_s) = got["joint"], got["split"]
    assert torch.equal(lj, ls) and set(loss_j) == set(loss_s) == {"ce", "kd"}
    for k in loss_j:
        torch.testing.assert_close(loss_s[k], loss_j[k], rtol=1e-6, atol=1e-7)
    for a, b in zip(grad_j, grad_s):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    for a, b in zip(buf_j, buf_s):  # same forwards in the same order: running statistics bit-equal
        assert torch.equal(a, b)


def test_split_backward_holds_one_forward_at_a_time():
    """Peak bytes saved for backward: joint holds both forwards' activations until its one backward (~2x CE),
    split about one forward's (CE's)."""
    from scripts.bench.measure import saved_for_backward_bytes

    peaks = {}
    for mode in ("ce", "joint", "split"):
        model, first, second = _bn_net(), *_two_batches(False)
        if mode == "ce":
            step = lambda: F.cross_entropy(model(second.views[0]), second.y).backward()  # noqa: E731
        else:
            method = DLB(backward=mode)
            method.training_step(model, first)
            step = lambda: sum(method.training_step(model, second)[1].values()).backward()  # noqa: E731
        peaks[mode] = saved_for_backward_bytes(step, exclude=model.parameters())
    assert peaks["joint"]["peak"] == peaks["joint"]["total"] > 1.9 * peaks["ce"]["peak"]
    assert peaks["split"]["total"] == pytest.approx(peaks["joint"]["total"], rel=0.01)  # the same tensors ...
    assert peaks["split"]["peak"] < 1.45 * peaks["ce"]["peak"]  # ... never all held at once (S_{t-1} has 4 rows)


def test_split_backward_is_validated():
    from dlb.errors import ConfigError
    from dlb.train import load_config

    with pytest.raises(ConfigError, match=r"^method\.backward=halves: .*use one of joint, split$"):
        load_config(["method.backward=halves"])
    with pytest.raises(ValueError, match="halves"):
        DLB(backward="halves")
