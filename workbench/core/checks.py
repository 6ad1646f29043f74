"""Argument checks, one message style for the library and the CLI: "ARG: expected WHAT, got VALUE".

Booleans are never numbers here (`True` is an int to Python, not to a user: `samples=True`, `replace=(True, 5)`
are refused), and floats must be finite unless a bound says otherwise. Every check returns the value (a float
for `number`), so a call site reads `samples = checks.integer(samples, "samples")`.

The rule for every `raise ValueError` / `TypeError` in workbench (tests/test_stack.py scans the source for it):
- a value the caller passed that is not what the function takes: `raise fail(arg, expected, got)` (or a helper
  below, which returns the value); never the message "ARG: expected WHAT, got VALUE" written out by hand;
- anything else (a file's content, a model's state, a combination of arguments): a literal message that names
  what is wrong first, "NAME: problem" (NAME: an argument, a file's role or an object, e.g. "out: ... is in use",
  f"{arg}: {path}: not valid JSON"), so every message reads the same way whichever layer raised it.
"""
from __future__ import annotations

import math
import numbers

# temperatures below this make logits / T overflow float32 (every row NaN, nothing sampled); 0 means greedy
MIN_TEMPERATURE = 1e-3
# learning rates above this are not a training run but a divergence (NaN parameters after a step or two)
MAX_LEARNING_RATE = 10.0


# a value's repr longer than this is cut in a message (a list of 1000 prompts is not a message)
MAX_GOT = 200


def fail(arg: str, expected: str, got, error: type = ValueError) -> Exception:
    """The one message: `raise fail("samples", "an integer >= 1", 0)` (`error`: a ValueError subclass, or
    TypeError). `got` is shown as its repr, cut to MAX_GOT characters."""
    shown = repr(got)
    if len(shown) > MAX_GOT:
        shown = f"{shown[:MAX_GOT - 20]}... ({len(shown)} characters)"
    return error(f"{arg}: expected {expected}, got {shown}")


def is_int(value) -> bool:
    """An integer that is not a bool (numpy integers count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number that is not a bool (ints, floats, numpy scalars)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(value, arg: str, minimum: int | None = 1, maximum: int | None = None, *, none_ok: bool = False,
            error: type = ValueError):
    """An int (not a bool) with minimum <= value <= maximum (None: unbounded), or None where allowed."""
    if value is None and none_ok:
        return None
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise fail(arg, _range("an integer", minimum, maximum), value, error)
    return int(value)


def number(value, arg: str, *, minimum: float | None = None, maximum: float | None = None, positive: bool = False,
           none_ok: bool = False, error: type = ValueError) -> float | None:
    """A finite real number (not a bool): > 0 if `positive`, within [minimum, maximum] where given; or None."""
    if value is None and none_ok:
        return None
    ok = is_number(value) and math.isfinite(value) and not (positive and not value > 0) \
        and not (minimum is not None and value < minimum) and not (maximum is not None and value > maximum)
    if not ok:
        if positive and maximum is not None:
            raise fail(arg, f"a finite number in (0, {maximum}]", value, error)
        what = "a finite number" + (" > 0" if positive else "")
        raise fail(arg, _range(what, minimum, maximum), value, error)
    return float(value)


def learning_rate(value, arg: str = "lr", error: type = ValueError) -> float:
    """A learning rate: finite, > 0 and at most MAX_LEARNING_RATE."""
    return number(value, arg, positive=True, maximum=MAX_LEARNING_RATE, error=error)


def boolean(value, arg: str) -> bool:
    if not isinstance(value, bool):
        raise fail(arg, "True or False", value)
    return value


def choice(value, arg: str, choices) -> object:
    """One of `choices` (a message listing them)."""
    if value not in tuple(choices):
        raise fail(arg, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def position(value, arg: str, length: int | None = None) -> int:
    """A token position: an int (not a bool), -length <= value < length where `length` is given."""
    if not is_int(value) or (length is not None and not -length <= value < length):
        where = f" in -{length}..{length - 1}" if length is not None else ""
        raise fail(arg, f"an integer position{where}", value)
    return int(value)


def positions(values, arg: str, length: int | None = None) -> list[int]:
    """A non-empty list of positions; the message names the failing item (`arg[i]`)."""
    if is_int(values):
        values = [values]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise fail(arg, "an integer position or a list of them", values)
    values = list(values)
    if not values:
        raise fail(arg, "at least one position", values)
    return [position(v, f"{arg}[{i}]", length) for i, v in enumerate(values)]


def distinct_tokens(answer, foil, metric: str = "logit_diff", unit: str = "pair") -> None:
    """answer[i] != foil[i] (token ids [n]): with the same token, logit[answer] - logit[foil] is 0 whatever is
    done, so every number the comparison gives is 0 (a degenerate comparison, refused everywhere)."""
    if foil is None:
        return
    same = (answer == foil).nonzero()
    if len(same):
        i = int(same[0, 0])
        raise ValueError(f"foil: {unit} {i}: answer and foil are the same token ({int(answer[i])}), so the "
                         f"{metric!r} metric (answer - foil logit difference) is 0 whatever is done; degenerate "
                         f"{unit}; expected a foil other than the answer")


def finite_tensor(t, arg: str):
    """A tensor with no NaN or infinity (the message counts them and names the first index)."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise fail(arg, "a tensor", type(t).__name__)
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0].tolist())
            kind = "nan" if bool(torch.isnan(t).any()) else "inf"
            raise ValueError(f"{arg}: expected finite values, got {int(bad.sum())} non-finite ({kind}), the first at "
                             f"index {first}")
    return t


def _range(what: str, lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"{what} in {lo}..{hi}"
    if lo is not None:
        return f"{what} >= {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what
