"""NVML sampling for vllm_gpu_utilization (no GPU here: NVML's Python API is stood in)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_canary.server.gpu import nvml_utilization


class FakeNvml:
    """The five pynvml calls the sampler uses, over fixed per-GPU utilizations."""

    def __init__(self, rates: list[int], fail_init: bool = False) -> None:
        self.rates, self.fail_init = rates, fail_init

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.rates)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.rates[handle], memory=0)


def test_mean_of_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    sample = nvml_utilization(FakeNvml([10, 50, 100]))  # type: ignore[arg-type]
    assert sample is not None and sample() == pytest.approx(0.75)


def test_all_gpus_when_nothing_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sample = nvml_utilization(FakeNvml([20, 40]))  # type: ignore[arg-type]
    assert sample is not None and sample() == pytest.approx(0.3)


def test_no_driver_or_no_gpu_means_no_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml_utilization(FakeNvml([1], fail_init=True)) is None  # type: ignore[arg-type]
    assert nvml_utilization(FakeNvml([])) is None  # type: ignore[arg-type]
