"""`--faulty copier`: the copy attack, for demos and tests of copy detection.

The copier reads an honest peer's payload of this window, perturbs its values a little
(so that its bytes differ), relabels it with its own uid and hotkey and signs it with its
own key: a payload every check of the wire format and signature accepts, from someone who
trained nothing.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from core import codec

if TYPE_CHECKING:
    from neurons.miner import Miner

# Relative size of the noise added to each parameter: well inside what changes no score.
NOISE = 1e-3


async def copy_a_peer(miner: Miner, window: int) -> tuple[bytes, int] | None:
    """Our relabelled copy of the first peer payload of `window` that turns up, and the uid
    copied; None when none turned up with time left in the time window to upload it."""
    assert miner.uid is not None
    metagraph, commitments = await miner.peers_view()
    others = [u for u in miner.miners_of(metagraph, commitments) if u != miner.uid]
    tw = await miner.time_window(window)
    # Look until a quarter of the time window is left: time enough to upload on time.
    left = (tw.end - miner.clock.now() - (tw.end - tw.start) / 4).total_seconds()
    if not others or left <= 0:
        return None
    peers = await miner.stream_peers(window, others, metagraph, commitments, timeout=left)
    async with contextlib.aclosing(peers):
        async for fetched in peers:
            if fetched.ok and fetched.payload is not None and fetched.uid is not None:
                return _relabel(miner, fetched.payload, window), fetched.uid
    return None


def _relabel(miner: Miner, payload: codec.Payload, window: int) -> bytes:
    assert miner.uid is not None
    dense = miner.compressor.decode(payload.compressed, device="cpu")
    gen = torch.Generator().manual_seed(window * 7919 + miner.uid)
    noisy = {
        name: t + NOISE * float(t.std()) * torch.randn(t.shape, generator=gen)
        for name, t in dense.items()
    }
    return miner.encode_gradient(miner.compressor.encode(noisy), window)
