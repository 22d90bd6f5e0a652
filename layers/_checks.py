"""Argument checks shared by the functional ops and modules of ``layers`` (one home for each).

Every check raises ``ValueError`` naming the argument, the expected form and the value it got.
"""
from __future__ import annotations

from typing import List, Sequence, Union

IntPair = Union[int, Sequence[int]]


def _is_int(v) -> bool:
    # bool is an int subclass; True as a stride or size is a mistake, not 1
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(value, name: str, minimum: int, n: int, noun: str, form: str) -> List[int]:
    """``value`` (an int, or a sequence of 1 or ``n`` ints) as a list of ``n`` ints >= ``minimum``."""
    if _is_int(value):
        out = [value] * n
    elif isinstance(value, (tuple, list)) and len(value) in (1, n) and all(_is_int(v) for v in value):
        out = [value[0]] * n if len(value) == 1 else list(value)
    else:
        raise ValueError(f"{name} must be an int or a {noun} of ints{form}, got {value!r}")
    if min(out) < minimum:
        bound = {1: "positive (>= 1)", 0: "non-negative (>= 0)"}.get(minimum, f">= {minimum}")
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return out


def pair(value: IntPair, name: str, minimum: int, form: str = "") -> List[int]:
    """``value`` (an int, or a sequence of one or two ints) as ``[h, w]``, each at least ``minimum``.

    ``form`` names the pair's parts in the message, e.g. ``" (PH, PW)"``. Messages:
    "<name> must be an int or a pair of ints<form>, got ..." and "<name> must be positive (>= 1), got
    ..." / "<name> must be non-negative (>= 0), got ..." (other minimums: "must be >= m").
    """
    return _ints(value, name, minimum, 2, "pair", form)


def triple(value, name: str, minimum: int) -> List[int]:
    """``value`` (an int, or a sequence of one or three ints) as ``[d, h, w]``, each at least
    ``minimum``; the messages are :func:`pair`'s, with "a triple of ints (d, h, w)"."""
    return _ints(value, name, minimum, 3, "triple", " (d, h, w)")


def positive_int(value, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else "<name> must be a positive int, got ..."."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
