"""The top-k running sum on the CPU, on the compiled kernels, a batch of peers at a time.

Preparing a peer takes what the compiled check already found (`Checked.found`, a
`cpu_fold.Scan`): its norms and the arrays the batched fold reads. Adding only queues the
peer (`cpu_fold.BatchFold`); a full batch folds on a thread of its own while the next one
fills, and `add` waits on the event loop, not blocking it, when the next batch would have
to wait for that fold. Without the DCT the fold adds straight into each parameter's
row-major layout, so the result needs no reordering; the DCT's inverse needs whole chunks.
On the CPU the sum reuses a buffer kept from the last gather (`buffers`).
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from core.compression import cpu_fold
from core.compression.base import Checked, Compressed
from core.compression.buffers import BUFFERS
from core.compression.summing import ChunkDomain, Prepared, Weigh, squares_of


def runs(params, device: torch.device | str) -> bool:
    """Whether this sum serves payloads of `params` on `device`."""
    return torch.device(device).type == "cpu" and cpu_fold.supported(params)


class CompiledSum(ChunkDomain):
    def __init__(
        self,
        compressor,
        plan,
        device: torch.device | str = "cpu",
        *,
        batch: int | None = None,
        peers: int | None = None,
        background: bool = False,
    ) -> None:
        """`batch`: peers per compiled fold (None: as many as `cpu_fold.BATCH_BYTES` holds,
        in equal batches when the number of `peers` expected is known); `background`:
        `add` awaits a running fold on the loop (False: it blocks, as a fake clock needs)."""
        super().__init__(compressor, plan)
        params = compressor.params
        if not runs(params, device):
            raise ValueError("the compiled sum needs the CPU and a format cpu_fold supports")
        self._row_major = not params.use_dct
        lay = cpu_fold.layout(plan, row_major=self._row_major)
        self._batch = cpu_fold.BatchFold(lay, plan, params, batch, peers=peers)
        self._background = background
        # A kept buffer, not zeroed here: the first batch clears each band as it first
        # reaches it, while the band is in the cache anyway.
        self._buf = torch.from_numpy(BUFFERS.take(self._numel))

    @torch.no_grad()
    def prepare(self, checked: Checked, *, on_loop: bool = False) -> Prepared:
        compressed = checked.compressed
        t = compressed.tensors
        p = self._compressor._params_of(compressed)
        scanned = checked.found
        if not isinstance(scanned, cpu_fold.Scan):  # checked elsewhere: scan it here
            scanned = cpu_fold.scan(self._plan, p, t, on_loop=on_loop)
        # numpy, not torch, for these small tables: its operations keep the GIL, where each
        # torch call lets it go and must queue for it again behind the S3 threads.
        if p.quantized:
            shift = t["shift"].numpy().astype(np.float64)
            table = t["lookup"].numpy().astype(np.float64) + shift[:, None]
            squares = squares_of(scanned.found, table)
            return Prepared(self._norms(squares), ((scanned.entries,), table))
        idx = t["idx"] if scanned.packed is None else scanned.packed
        return Prepared(self._norms(scanned.found), ((idx, t["val"]), None))

    async def add(self, prepared: Prepared, weigh: Weigh) -> dict[str, float]:
        busy = self._batch.busy() if self._background else None
        if busy is not None:  # a batch is still folding: wait here, not in the loop
            await asyncio.wrap_future(busy)
        return self._commit(prepared, weigh, on_loop=True)

    def _commit(self, prepared: Prepared, weigh: Weigh, *, on_loop: bool) -> dict[str, float]:
        assert prepared.norms is not None
        arrays, values = prepared.work  # type: ignore[misc]
        weights = weigh(prepared.norms)
        # float32 weights, as torch.tensor makes them on the torch path, then the same
        # float64 products rounded to float32.
        per_param = np.array([float(weights[m.name]) for m in self._plan.params], np.float32)
        if values is not None:
            table = (values * per_param.astype(np.float64)[:, None]).astype(np.float32)
        else:
            table = per_param
        self._batch.add(arrays, table, self._buf.numpy(), on_loop=on_loop)
        return prepared.norms

    def fold(self, compressed: Compressed, weigh: Weigh) -> dict[str, float]:
        return self._commit(self.prepare(Checked(compressed)), weigh, on_loop=False)

    @torch.no_grad()
    def result(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """The sum (times `scale`) per parameter, as views into the sum's own buffer; the
        row-major fold scales during its last batch."""
        fused = scale if self._row_major else 1.0
        flushed = self._batch.flush(self._buf.numpy(), both_cores=True, scale=fused)
        if not self._batch.cleared:  # no peer was added: the kept buffer is not clear
            self._buf.zero_()
        self._batch.release()
        if self._row_major:
            if not flushed and scale != 1.0:
                self._buf.mul_(scale)
            out = self._views(self._buf)
        else:
            out = self._from_chunks(self._buf, scale)
        self._buf = torch.zeros(0)  # the sum is handed over, once
        return out
