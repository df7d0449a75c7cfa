"""Speed and memory measurements behind ``grounding bench``; ``bench all`` writes the table of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from datetime import date


def machine_description() -> str:
    """One line naming the machine: CPU model, cores, memory, GPU if any, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {gpu}, torch {torch.__version__}"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(command: str) -> str:
    return f"command: `{command}`\nmachine: {machine_description()}\ndate: {date.today()}  revision: {git_revision()}"
