"""Where a fit runs: the one reading of a ``device=`` argument (and of ``--device``).

:func:`resolve_device` turns ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``,
``"auto"`` or a :class:`torch.device` into a :class:`torch.device` that is
available on this machine, or raises an error that names the value, says what
was found and how to fix it::

    >>> resolve_device("auto")  # cuda if available, else mps, else cpu  # doctest: +SKIP
    device(type='cpu')
    >>> resolve_device("cuda:3")  # doctest: +SKIP
    ValueError: device 'cuda:3' is not available: 1 CUDA device found; use 'cpu' or 'auto'

(The example is not run as a doctest: its output depends on the machine.)
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device"]

#: The spellings :func:`resolve_device` accepts (``cuda:N`` for CUDA device ``N``).
DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "mps", "auto")
_FIX = "use 'cpu' or 'auto'"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and bool(mps.is_available())


def _parse(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device` of type cpu, cuda or mps (not checked as present)."""
    shown = f"one of {', '.join(repr(c) for c in DEVICE_CHOICES)} or a torch.device"
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device.strip())
        except RuntimeError:
            raise ValueError(f"device must be {shown}, got {device!r}") from None
    else:
        raise TypeError(f"device must be {shown}, got {device!r} ({type(device).__name__})")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be {shown}, got {str(device)!r}")
    return parsed


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The :class:`torch.device` meant by ``device``, checked to be present here.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``; ``"cuda"`` (the current CUDA device) or ``"cuda:N"``;
        ``"mps"`` (Apple silicon); ``"auto"``: CUDA if available, else MPS if
        available, else the CPU; or a :class:`torch.device` of one of these types.

    Returns
    -------
    torch.device
        With an explicit index for CUDA (``cuda:0``, not ``cuda``), so that it
        compares equal to the device of the tensors placed on it.

    Raises
    ------
    ValueError
        An unknown spelling, or a device this machine does not have (the message
        says how many CUDA devices were found).
    TypeError
        Neither a string nor a :class:`torch.device`.
    """
    if isinstance(device, str) and device.strip() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    parsed = _parse(device)
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = parsed.index
        if count == 0 or (index is not None and index >= count):
            found = f"{count or 'no'} CUDA device{'' if count == 1 else 's'} found"
            if torch.version.cuda is None:
                found += f" (torch {torch.__version__} is built without CUDA)"
            raise ValueError(f"device {str(device)!r} is not available: {found}; {_FIX}")
        return torch.device("cuda", torch.cuda.current_device() if index is None else index)
    if parsed.type == "mps" and not _mps_available():
        raise ValueError(f"device {str(device)!r} is not available: no MPS device found; {_FIX}")
    return parsed
