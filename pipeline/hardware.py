"""What a run ran on, in words: recorded in each model file and shown in the report."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str = "cpu") -> str:
    """One line: the accelerator a run used (GPU name, or CPU model with cores and torch threads),
    and the torch version. ``device`` is a torch device string ("cpu", "cuda", "cuda:1")."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        where = f"GPU {torch.cuda.get_device_name(index)} (CPU {cpu_model()})"
    else:
        where = f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{where}, torch {torch.__version__}"
