"""Grouped k-fold assignment: which samples each cross-validation fold holds out (pure Python).

Frames of one city (Cityscapes) or one video sequence (CamVid) look alike; a model validated on
frames whose neighbours it trained on scores higher than it will on a new city. So whole groups
go to one fold: largest group first, each into the fold with the fewest images so far (ties: the
lower fold), which balances image counts as far as the group sizes allow. The seed shuffles the
order of equally large groups (and, with no groups, of the samples), so another seed gives
another, equally balanced, assignment; the same seed always gives the same one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import ConfigError


@dataclass(frozen=True)
class Fold:
    index: int
    groups: tuple[str, ...]  # sorted
    samples: tuple[str, ...]  # the held-out sample names, sorted

    def to_dict(self) -> dict:
        return {"fold": self.index, "groups": list(self.groups), "samples": list(self.samples)}


def group_samples(names: Sequence[str], groups: Sequence[str]) -> dict[str, list[str]]:
    """Sample names by group; an empty group name makes the sample a group of its own."""
    by_group: dict[str, list[str]] = {}
    for name, group in zip(names, groups):
        by_group.setdefault(group or name, []).append(name)
    return by_group


def assign_folds(by_group: Mapping[str, Sequence[str]], folds: int, seed: int = 0, kind: str = "groups") -> list[Fold]:
    """`folds` folds of whole groups, balanced by sample count (see the module docstring).

    `kind` names the groups in the error raised when there are fewer groups than folds
    (e.g. "cities")."""
    if folds < 2:
        raise ConfigError(f"--folds: expected at least 2 folds, got {folds}")
    if len(by_group) < folds:
        raise ConfigError(f"--folds: {folds} folds need at least {folds} {kind}, but the training split has "
                          f"only {len(by_group)}; choose --folds {len(by_group)} or fewer")
    order = sorted(by_group)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda group: -len(by_group[group]))  # stable: equal sizes keep the shuffled order
    members: list[list[str]] = [[] for _ in range(folds)]
    counts = [0] * folds
    for group in order:
        target = min(range(folds), key=lambda i: (counts[i], i))
        members[target].append(group)
        counts[target] += len(by_group[group])
    return [Fold(i, tuple(sorted(groups)), tuple(sorted(n for g in groups for n in by_group[g])))
            for i, groups in enumerate(members)]
