"""Training-label noise: symmetric (uniform to another class) and asymmetric (class-pair flips).

The noisy labels are a pure function of (dataset name, noise name, rate, noise seed) and the clean labels, never of
the run seed or the method, so every method and seed of a comparison trains on the same corrupted labels. Details
and the recorded file: docs/augment_and_noise.md."""
from __future__ import annotations

import hashlib

import torch

from dlb.choice import NoiseName


# CIFAR-10's standard asymmetric map (Patrini et al. 2017): truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_FLIPS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# CIFAR-100 fine label -> superclass (coarse label), as in the archive's coarse_labels.
CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def noise_seed(dataset: str, name: str, rate: float, seed: int) -> int:
    """63-bit generator seed from a SHA-256 of (dataset, name, rate, seed), stable across processes (unlike hash());
    float(rate) so 0.4 and 0.40 agree."""
    key = f"{dataset}|{name}|{float(rate)!r}|{int(seed)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def labels_fingerprint(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.cpu().to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def asymmetric_map(dataset: str, num_classes: int) -> torch.Tensor:
    """target[c] = the class c flips to.  CIFAR-10: the standard pair map (other classes stay).  CIFAR-100: the
    next class of the same superclass, in fine-label order, circularly.  Any other dataset: (c + 1) mod K."""
    if dataset == "cifar10":
        target = torch.arange(num_classes)
        target[list(CIFAR10_FLIPS)] = torch.tensor(list(CIFAR10_FLIPS.values()))
        return target
    if dataset == "cifar100":
        coarse = torch.tensor(CIFAR100_COARSE)
        target = torch.empty(num_classes, dtype=torch.long)
        for s in range(20):
            members = (coarse == s).nonzero().flatten()  # ascending fine labels
            target[members] = members.roll(-1)
        return target
    return (torch.arange(num_classes) + 1) % num_classes


def noisy_labels(labels: torch.Tensor, num_classes: int, dataset: str, name: str, rate: float,
                 seed: int) -> torch.Tensor:
    """The labels with noise `name` at `rate`: each label is flipped with probability `rate` (independently), to a
    uniformly random other class (symmetric) or to asymmetric_map's class (asymmetric)."""
    if name == "none":
        return labels.clone()
    name = NoiseName(name)  # ValueError for an unknown one
    g = torch.Generator().manual_seed(noise_seed(dataset, name, rate, seed))
    labels = labels.cpu()
    flip = torch.rand(len(labels), generator=g) < rate
    if name == "symmetric":
        # y + U{1..K-1} mod K is uniform over the K-1 other classes and never y itself.
        other = (labels + torch.randint(1, num_classes, labels.shape, generator=g)) % num_classes
    else:
        other = asymmetric_map(dataset, num_classes)[labels]
    return torch.where(flip, other, labels)
