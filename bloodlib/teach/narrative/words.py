"""The few ways a number or a list becomes words, shared by every sentence of the notebooks."""

from __future__ import annotations

from collections.abc import Sequence


def pct(x: float | None, digits: int = 1) -> str:
    """``0.9551`` -> ``"95.5 %"``; None -> ``"n/a"``."""
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def points(x: float) -> str:
    """An accuracy difference in percentage points, signed: ``0.015`` -> ``"+1.5 points"``."""
    value = round(100 * x, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.1f} points"


def and_list(items: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def few_names(items: Sequence[str], most: int = 3) -> str:
    """A few names joined, or "N classes" when listing them would drown the sentence."""
    return and_list(items) if len(items) <= most else f"{len(items)} classes"
