"""What made an image, beyond its row: library versions and the device's name (metadata columns).
torch is imported only to name a device, so error rows can be written where torch is not loaded."""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class RuntimeInfo:
    sdbatch_version: str | None
    diffusers_version: str | None
    torch_version: str | None
    device_name: str | None


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_name()
    return str(device)


@functools.lru_cache(maxsize=None)
def runtime_info(device=None) -> RuntimeInfo:
    """Per process and device (``None``: rows that never reached a device)."""
    return RuntimeInfo(
        sdbatch_version=_package_version("sdbatch"),
        diffusers_version=_package_version("diffusers"),
        torch_version=_package_version("torch"),
        device_name=device_name(device) if device is not None else None,
    )
