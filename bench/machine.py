"""The machine and software a benchmark ran on."""

from __future__ import annotations

import hashlib
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "stable-baselines3", "gymnasium", "mujoco", "numpy", "moto")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def source_fingerprint(repo: Path) -> str:
    """Hash of the code and configs measured (rlpipe, configs, bench), to tell results of different trees apart."""
    digest = hashlib.sha256()
    for pattern in ("rlpipe/**/*.py", "rlpipe/**/*.json", "configs/**/*.yaml", "bench/*.py"):
        for path in sorted(repo.glob(pattern)):
            digest.update(str(path.relative_to(repo)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def describe() -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and package versions, torch's default thread count, date, load."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    return {
        "cpu_model": _cpu_model(), "logical_cores": os.cpu_count(), "memory_gb": _memory_gb(),
        "os": platform.platform(), "python": platform.python_version(), "packages": versions,
        "torch_default_threads": torch_threads, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "source_sha256": source_fingerprint(Path(__file__).resolve().parent.parent),
    }
