"""Helpers shared by the benchmarks: statistics, machine description, RSS sampling, and a
ballast that evens out what the hypervisor does to freed memory."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch


class Ballast:
    """A scratch file written ahead, untimed, and deleted right before a timed operation, so
    the operation starts with that much memory freed a moment ago.

    This VM hands free memory back to its host (virtio-balloon free page reporting) within a
    second or two, and the next use of a page handed back faults it in again on the host:
    writing a fresh 189 MB file cost 288-486 ms of CPU after a 3 s pause instead of ~40 ms
    right after a delete (measured, docs/benchmarks.md). Which operation of a pair got such
    pages depended on timing, not on the code. Deleting a file of the operation's size just
    before it gives every operation pages the host still backs, as a machine without
    reporting has them all the time. (Faulting in and freeing anonymous memory did not help:
    the page cache did not reuse it.)
    """

    def __init__(self, path: Path, nbytes: int) -> None:
        self._path = Path(path)
        self._nbytes = nbytes
        self._chunk = os.urandom(min(nbytes, 8 << 20))

    def fill(self) -> None:
        with open(self._path, "wb") as fh:
            left = self._nbytes
            while left > 0:
                piece = memoryview(self._chunk)[: min(left, len(self._chunk))]
                fh.write(piece)
                left -= len(piece)

    def release(self) -> None:
        self._path.unlink(missing_ok=True)


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


def cell(timing: dict, digits: int = 3) -> str:
    """A timing object as a table cell: median (min)."""
    return f"{timing['median_s']:.{digits}f} ({timing['min_s']:.{digits}f})"


def save(out: Path, name: str, result: dict, text: str) -> None:
    """One benchmark run alone: `<name>.json` and `<name>.md` under `out`, the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(text + "\n")
    print(text)
