"""Accelerator utilization for `vllm_gpu_utilization`, read through NVML on a GPU host.

The `vllm` and `upstream` engines have no utilization of their own; on a host with NVIDIA
GPUs (the server image ships `nvidia-ml-py` with vLLM) we sample the GPUs this process may
use. Without NVML or a GPU the histogram stays empty rather than reporting a made-up value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any


def _visible(nvml: Any) -> list[Any]:
    count = nvml.nvmlDeviceGetCount()
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None or wanted.strip() == "":
        indices = list(range(count))
    else:
        indices = [int(i) for i in wanted.split(",") if i.strip().isdigit() and int(i) < count]
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]


def nvml_utilization(nvml: ModuleType | None = None) -> Callable[[], float] | None:
    """A sampler returning the mean utilization (0..1) of the visible GPUs, or None when
    NVML is not installed or finds no GPU."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[import-not-found, no-redef]
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
        handles = _visible(nvml)
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable GPU
        return None
    if not handles:
        return None

    def sample() -> float:
        rates = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
        return min(1.0, max(0.0, sum(rates) / (100.0 * len(rates))))

    return sample
