"""Greedy soup (Wortsman et al., 2022, Recipe 1): ingredients sorted by their own held-out
accuracy, each added to the soup only if the soup's held-out accuracy does not drop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from tlx.fusion.uniform_soup import uniform_soup

Evaluate = Callable[[dict[str, Tensor]], float]  # weights -> held-out accuracy (recalibrated inside if needed)


def greedy_soup(states: Sequence[dict[str, Tensor]], accuracies: Sequence[float],
                evaluate: Evaluate) -> tuple[dict[str, Tensor], list[int], list[dict[str, Any]]]:
    """Returns the soup's weights, the indices it holds, and the steps taken: for each
    ingredient in the order tried, the soup's accuracy with it and whether it was kept.

    The first (best) ingredient alone starts the soup, so the result is never below the best
    single run on the held-out split used here (a test split it did not see may differ)."""
    order = sorted(range(len(states)), key=lambda i: -accuracies[i])
    members, best = [order[0]], accuracies[order[0]]
    steps = [{"ingredient": order[0], "val_acc": best, "kept": True}]
    for i in order[1:]:
        acc = evaluate(uniform_soup([states[j] for j in members + [i]]))
        kept = acc >= best
        steps.append({"ingredient": i, "val_acc": acc, "kept": kept})
        if kept:
            members.append(i)
            best = acc
    soup = uniform_soup([states[j] for j in members]) if len(members) > 1 else dict(states[members[0]])
    return soup, sorted(members), steps
