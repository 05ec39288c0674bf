"""The machine description that every benchmark prints with its numbers."""

import os
import platform


def describe_machine():
    """CPU model, core counts, load average, OS and Python version."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity"
    ) else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores ({usable} usable), load average "
        f"{load}; {platform.platform()}, Python {platform.python_version()}"
    )
