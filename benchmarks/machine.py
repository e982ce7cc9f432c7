"""What a benchmark says of the machine it ran on."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows of it.

    Training runs round differently on different CPUs (AVX2 against AVX-512), so a figure
    says which one it came from: ``platform.processor()`` alone is only ``x86_64`` on Linux.
    """
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
