"""The environment a measurement was made in (recorded beside every result): date, machine, versions,
commit."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch



def git_commit(short: bool = False) -> str | None:
    try:
        args = ["git", "rev-parse"] + (["--short=12"] if short else []) + ["HEAD"]
        out = subprocess.run(args, cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git, not a checkout: the commit is unknown
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment(device="cpu") -> dict:
    """Date, machine, versions and commit: what a result file must say about where it came from."""
    import importlib.metadata

    import transformers  # heavy: imported when a result is written, not when the CLI starts

    try:
        ours = importlib.metadata.version("specdec")
    except importlib.metadata.PackageNotFoundError:
        ours = None
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "specdec": ours}
    try:
        import triton
        versions["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional off Linux
        versions["triton"] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "device_name": device_name(device), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "versions": versions, "commit": git_commit()}
