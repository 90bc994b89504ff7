"""Helpers shared by the benchmarks: timing, statistics, machine description, RSS sampling,
the command line and its output files, and a ballast that evens out what a hypervisor does to
freed memory (opt-in: `--vm-workarounds`)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import psutil
import torch

RESULTS = Path(__file__).parent / "results"


@attrs.frozen
class Timing:
    seconds: float
    cpu_seconds: float  # this process's, every thread, kernel time included
    result: object


def timed(
    fn: Callable[..., object],
    *args: object,
    sync: Callable[[], None] | None = None,
    collect: bool = False,
) -> Timing:
    """Time `fn(*args)`; `sync` (a device synchronisation) runs before the clock starts and before
    it stops, so queued device work is counted; `collect` frees garbage first, untimed."""
    if collect:
        gc.collect()
    if sync:
        sync()
    cpu, start = time.process_time(), time.perf_counter()
    result = fn(*args)
    if sync:
        sync()
    return Timing(time.perf_counter() - start, time.process_time() - cpu, result)


async def timed_async(fn: Callable[..., Awaitable[object]], *args: object) -> Timing:
    """Time `await fn(*args)`."""
    cpu, start = time.process_time(), time.perf_counter()
    result = await fn(*args)
    return Timing(time.perf_counter() - start, time.process_time() - cpu, result)


class Ballast:
    """A scratch file written ahead, untimed, and deleted right before a timed operation, so
    the operation starts with that much memory freed a moment ago.

    Only with `--vm-workarounds`: a VM whose hypervisor takes freed memory back (virtio-balloon
    free page reporting) faults it in again on the host at its next use, which costs a write
    many times its CPU time (figures in docs/benchmarks.md), and which operation of a pair got
    such pages depended on timing, not on the code. Deleting a file of the operation's size
    just before it gives every operation pages the host still backs, as a machine without
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


def parser(doc: str, quick_help: str | None = None) -> argparse.ArgumentParser:
    """The command line every benchmark shares: --quick and --out (the first line of the
    module's docstring describes it); a benchmark adds its own flags."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def vm_workarounds_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vm-workarounds",
        action="store_true",
        help="free a ballast file before each checkpoint timing and sample the host's steal "
        "time (for VMs whose hypervisor reclaims freed memory; docs/benchmarks.md)",
    )


def save(out: Path, name: str, result: dict, text: str) -> None:
    """One benchmark run alone: `<name>.json` and `<name>.md` under `out`, the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = text.rstrip("\n")
    (out / f"{name}.md").write_text(text + "\n")
    print(text)
