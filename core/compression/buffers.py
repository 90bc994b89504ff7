"""Model-sized float32 buffers kept from one gather to the next.

A gather's sum is as large as the model (100 MB for the 25M-parameter benchmark model) and
a neuron gathers every window. A fresh allocation of that size comes from the kernel as
untouched pages: each first write faults, and on a virtual machine whose host has reclaimed
that memory a fault costs far more (measured on the benchmark machine: 9 ms to touch 100 MB
fresh pages in the good case, 50-180 ms when the host must back them again, against 0.3 ms
for pages already touched). So the buffer of the last sum is kept, and the next sum of the
same size reuses one of the last two once nobody holds its result any more (two, because a
neuron usually still holds the last window's result while it gathers the next).

A buffer is handed out with whatever it last held: the caller must clear it (the compiled
fold clears each chunk as it first reaches it, see `cpu_fold.BatchFold`).

Whether a buffer is still in use is read from its reference count: the result tensors share
its memory through `torch.from_numpy`, which holds a reference to the array until the last
of them is gone. At most `per_size` buffers of each of `sizes` sizes are kept; `clear()`
lets them all go.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["BUFFERS", "BufferPool"]

# Once popped from the pool's list: the local name, plus the one `sys.getrefcount` takes.
_IDLE_REFS = 2


class BufferPool:
    def __init__(self, per_size: int = 2, sizes: int = 2) -> None:
        self._per_size = per_size
        self._sizes = sizes
        self._lock = threading.Lock()
        self._kept: OrderedDict[int, list[np.ndarray]] = OrderedDict()

    def take(self, numel: int) -> np.ndarray:
        """A float32 array of `numel` numbers, with arbitrary contents, that no result of an
        earlier sum still uses."""
        with self._lock:
            kept = self._kept.pop(numel, [])
            for i in range(len(kept)):
                array = kept.pop(i)
                if sys.getrefcount(array) == _IDLE_REFS:
                    self._keep(numel, [*kept, array])
                    return array
                kept.insert(i, array)
                del array
            # All in use (a neuron holds the last window's result while it gathers the
            # next): the oldest stays with whoever holds it, and is freed with them.
            array = np.zeros(numel, np.float32)
            self._keep(numel, [*kept, array][-self._per_size :])
            return array

    def _keep(self, numel: int, arrays: list[np.ndarray]) -> None:
        self._kept[numel] = arrays
        while len(self._kept) > self._sizes:
            self._kept.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def kept(self) -> int:
        """How many buffers are kept."""
        with self._lock:
            return sum(len(a) for a in self._kept.values())

    def kept_bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for arrays in self._kept.values() for a in arrays)


BUFFERS = BufferPool()
