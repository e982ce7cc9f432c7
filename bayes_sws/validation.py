"""Input checks for the public API: one home, so one bad value gets one error everywhere.

Every check raises with the same wording template::

    {name} must be {description}, got {value!r} ({type})      # TypeError: wrong kind of value
    {name} must be {description}, got {value!r}[; {hint}]     # ValueError: right kind, bad value

``description`` is a noun phrase ("a number", "an integer", "True or False")
followed by the allowed range (``> 0``, ``>= 1``, ``in (0, 1)``). A check
returns the value converted to a plain Python object (``float``, ``int``,
``bool``, ``tuple`` of ``str``), so numpy scalars such as ``np.int64(4)`` work
wherever a Python number does and nothing downstream sees numpy types.

The habit comes from torchmetrics' ``utilities/checks.py``: every input check in
one module (STYLE.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal, overload

import numpy as np
import torch

__all__ = [
    "SEED_MAX",
    "check_bool",
    "check_finite_tensor",
    "check_int",
    "check_lr_scheduler",
    "check_names",
    "check_real",
    "check_seed",
]

#: Largest seed accepted: ``np.random.seed`` and ``pyro.set_rng_seed`` (which seeds
#: numpy) refuse anything outside ``[0, 2**32 - 1]``; ``torch.manual_seed`` and
#: ``random.seed`` accept a wider range, so this is the range all of them accept.
SEED_MAX = 2**32 - 1


def _bounds(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    """The range part of a description: ``' > 0'``, ``' >= 1'``, ``' in (0, 1]'`` or ``''``."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _type_error(name: str, description: str, value: Any) -> TypeError:
    return TypeError(f"{name} must be {description}, got {value!r} ({type(value).__name__})")


def _value_error(name: str, description: str, shown: Any, hint: str | None = None) -> ValueError:
    return ValueError(
        f"{name} must be {description}, got {shown!r}" + (f"; {hint}" if hint else "")
    )


def _outside(value: float, low: Any, high: Any, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return True
    return high is not None and (value >= high if high_open else value > high)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool``; only ``True``/``False`` (or numpy's ``np.bool_``) pass.

    Strings such as ``"false"`` and integers such as ``0`` are refused with a
    TypeError rather than read by their truth value (``bool("false")`` is True).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _type_error(name, "True or False", value)


@overload
def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: Literal[False] = False,
    noun: str | None = None,
    hint: str | None = None,
) -> float: ...


@overload
def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool,
    noun: str | None = None,
    hint: str | None = None,
) -> float | None: ...


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    noun: str | None = None,
    hint: str | None = None,
) -> float | None:
    """``value`` as a finite Python ``float`` within the given bounds.

    Parameters
    ----------
    name : str
        The argument's name, as the user wrote it.
    value : object
        A real number: ``int``, ``float``, a numpy real scalar or a 0-d real tensor.
        ``bool``, strings and complex numbers are refused (TypeError), as are NaN
        and infinities (ValueError).
    low, high : float, optional
        Bounds; ``low_open``/``high_open`` exclude them (``> low`` rather than ``>= low``).
    allow_none : bool
        Let ``None`` through (returned as ``None``).
    noun : str, optional
        The words for what is expected. By default ``"a number"`` in a TypeError
        and ``"a finite number"`` (``"finite"`` without bounds) in a ValueError;
        given only where an existing message must stay word for word.
    hint : str, optional
        How to fix a bad value, appended to the ValueError.
    """
    if value is None and allow_none:
        return None
    bounds = _bounds(low, high, low_open, high_open)
    if (
        isinstance(value, torch.Tensor)
        and value.dim() == 0
        and not value.is_complex()
        and (value.dtype != torch.bool)
    ):
        number = float(value.item())
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    else:
        raise _type_error(name, (noun or "a number") + bounds, value)
    if noun is None:
        noun = "a finite number" if bounds else "finite"
    if not math.isfinite(number) or _outside(number, low, high, low_open, high_open):
        raise _value_error(name, noun + bounds, number, hint)
    return number


@overload
def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    low_open: bool = False,
    allow_none: Literal[False] = False,
    noun: str = "an integer",
    hint: str | None = None,
) -> int: ...


@overload
def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    low_open: bool = False,
    allow_none: bool,
    noun: str = "an integer",
    hint: str | None = None,
) -> int | None: ...


def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    low_open: bool = False,
    allow_none: bool = False,
    noun: str = "an integer",
    hint: str | None = None,
) -> int | None:
    """``value`` as a Python ``int`` within the given bounds.

    ``int`` and numpy integer scalars pass; ``bool``, floats (even ``2.0``) and
    strings are refused with a TypeError, values out of range with a ValueError.
    ``low_open=True`` writes the lower bound as ``> low``. ``noun`` and ``hint``
    are as in :func:`check_real`.
    """
    if value is None and allow_none:
        return None
    bounds = _bounds(low, high, low_open, False)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise _type_error(name, noun + bounds, value)
    number = int(value)
    if _outside(number, low, high, low_open, False):
        raise _value_error(name, noun + bounds, number, hint)
    return number


def check_seed(name: str, value: Any) -> int:
    """``value`` as a Python ``int`` seed in ``[0, SEED_MAX]``.

    That is the range ``np.random.seed``, ``pyro.set_rng_seed`` and
    ``torch.manual_seed`` all accept; numpy integers are converted, since
    ``random.seed`` (called by Pyro) refuses them.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise _type_error(name, "an integer", value)
    seed = int(value)
    if not 0 <= seed <= SEED_MAX:
        raise _value_error(
            name,
            "an integer",
            seed,
            "seeds must lie in [0, 2**32 - 1], the range numpy, torch and Pyro all accept",
        )
    return seed


def check_finite_tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` as a tensor (``torch.as_tensor``) with only finite entries.

    Non-numbers (strings, ragged lists) raise a TypeError; NaN or infinite
    entries a ValueError naming the first one and its index.
    """
    if isinstance(value, (str, bytes)):
        raise _type_error(name, "a tensor of finite numbers", value)
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise _type_error(name, "a tensor of finite numbers", value) from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise _type_error(name, "a tensor of finite numbers", value)
    if tensor.is_floating_point():
        bad = ~torch.isfinite(tensor)
        if bad.any():
            index = tuple(bad.nonzero()[0].tolist())
            raise _value_error(
                name,
                "a tensor of finite numbers",
                tensor[index].item(),
                f"first non-finite entry at index {list(index)}, {int(bad.sum())} in all",
            )
    return tensor


def check_names(name: str, value: Any, *, allow_none: bool = True) -> tuple[str, ...] | None:
    """Parameter names as a tuple of ``str``.

    One string is one name (``"0.weight"`` means ``("0.weight",)``, never its
    characters); any other iterable must hold only strings.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return (value,)
    description = "a parameter name (str) or a sequence of names"
    if not isinstance(value, Iterable):
        raise _type_error(name, description, value)
    names = tuple(value)
    if not all(isinstance(n, str) for n in names):
        raise _type_error(name, description, names)
    return tuple(str(n) for n in names)  # np.str_ -> str


def check_lr_scheduler(value: Any) -> Any:
    """``lr_scheduler`` of :func:`bayes_sws.fit` and :func:`bayes_sws.zoo.training.train`:
    ``None`` or a callable ``optimizer -> torch.optim.lr_scheduler`` scheduler
    (built by :func:`bayes_sws.optim.make_scheduler`)."""
    if value is not None and not callable(value):
        raise TypeError(
            "lr_scheduler must be a callable optimizer -> torch.optim.lr_scheduler.LRScheduler "
            f"(e.g. lambda opt: torch.optim.lr_scheduler.StepLR(opt, 100)), got {value!r}"
        )
    return value
