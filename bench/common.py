"""Helpers shared by the benchmarks: statistics, machine description, RSS sampling."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time

import psutil
import torch


def stats(times: list[float]) -> dict[str, float]:
    return {"min_s": min(times), "median_s": statistics.median(times), "runs": len(times)}


def machine(device: str = "cpu") -> dict[str, object]:
    return {
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if device.startswith("cuda") else None,
    }


class PeakRss:
    """Samples this process's RSS every few milliseconds; `peak` is the largest seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start_bytes = self._proc.memory_info().rss
        self.peak = self.start_bytes
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start_bytes
