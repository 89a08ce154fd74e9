"""Describe the machine and software a benchmark ran on, for the results it writes."""

from __future__ import annotations

import os
import platform

import torch


def machine_info() -> dict[str, str]:
    """CPU model, core count, torch version and threads, GPU (if any), Python version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_markdown() -> str:
    """The machine description as a Markdown bullet list."""
    return "\n".join(f"- {key}: {value}" for key, value in machine_info().items())
