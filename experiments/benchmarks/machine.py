"""Describe the machine and software a benchmark ran on, and the helpers the benchmarks
share to measure this process's memory and to write their result rows."""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path
from typing import Any

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


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: resident now; VmHWM:
    its peak), in MiB."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset this process's peak resident set (VmHWM) to the current one (Linux)."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
        handle.write("5")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as a CSV with a header; nothing if empty."""
    if not rows:
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
