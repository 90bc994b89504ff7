"""Shared pieces of the reliability suite: a small model, honest and hostile payloads, a net.

Payloads are tiny on purpose (a few KB): the suite proves behaviour, the benchmarks measure
speed. Hostile payloads are built the way an attacker would: valid safetensors with one
thing wrong, or not safetensors at all.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Mapping

import safetensors.torch
import torch

from adapters.clock import FakeClock
from adapters.storage.chaos import NO_FAULT, ChaosOpener, Fault
from adapters.storage.memory import MemoryStoreOpener
from core import codec
from core.aggregate import Normalisation
from core.codec import Expected, PayloadMeta
from core.compression import TopKCompressor, TopKParams
from core.decoding import Synchronous
from core.exchange import Exchange, ExchangeSettings
from core.fetch import FetchSettings
from core.gather import GatherResult, GatherSettings, gather
from ports import Bucket
from tests.support.aggregating import mean_of

V = "1"
W = 12
# Two chunk geometries (16x16 chunks of the weights, 16-long chunks of the bias).
SHAPES = {"l1.weight": (32, 48), "l1.bias": (48,), "l2.weight": (48, 16)}
COMP = TopKCompressor(TopKParams(target_chunk=16, topk=8))


def bucket(uid: int) -> Bucket:
    return Bucket(
        name=f"peer-{uid}", account_id="acct", access_key_id=f"key-{uid}", secret_access_key="s"
    )


def grads(seed: int, scale: float = 1.0, shapes: Mapping = SHAPES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * scale for n, s in shapes.items()}


def encode(
    uid: int,
    *,
    window: int = W,
    seed: int | None = None,
    step: int = 0,
    signer=None,
    scale: float = 1.0,
    comp: TopKCompressor = COMP,
    shapes: Mapping = SHAPES,
) -> bytes:
    compressed = comp.encode(grads(uid if seed is None else seed, scale, shapes))
    meta = PayloadMeta(window=window, uid=uid, hotkey=f"hk{uid}", global_step=step, version=V)
    return codec.encode(compressed, meta, signer=signer)


def split(data: bytes) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])["__metadata__"], safetensors.torch.load(data)


def rebuild(data: bytes, meta: Mapping | None = None, tensors: Mapping | None = None) -> bytes:
    """`data` with some metadata fields or tensors swapped (the result is unsigned)."""
    metadata, loaded = split(data)
    metadata.update(meta or {})
    loaded.update(tensors or {})
    return safetensors.torch.save(loaded, metadata=metadata)


def reference(uids, mode: Normalisation = Normalisation.UNIT) -> dict[str, torch.Tensor]:
    """The aggregate of the honest payloads of `uids`, computed without gather."""
    return mean_of(COMP, SHAPES, [COMP.encode(grads(uid)) for uid in uids], normalisation=mode)


class Marker:
    """Unpickling this creates the file at `path`: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_bomb(path: str) -> bytes:
    return pickle.dumps({"idx": Marker(path)})


def torch_save_bomb(path: str) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"idx": torch.zeros(4), "evil": Marker(path)}, buf)
    return buf.getvalue()


class Net:
    """One gathering neuron over in-memory buckets, with optional chaos on its reads."""

    def __init__(self, faults=None, *, seed: int = 0) -> None:
        self.clock = FakeClock()
        self.base = MemoryStoreOpener(self.clock)
        self.chaos = ChaosOpener(
            self.base, self.clock, faults or (lambda b, o, k: NO_FAULT), seed=seed
        )
        self.me = Exchange(
            self.base.open(bucket(0)),
            self.chaos,
            self.clock,
            V,
            ExchangeSettings(timestamp_resolution=0),
        )
        self.buckets = {u: bucket(u) for u in range(1, 300)}
        self.expected = Expected(version=V, codec=COMP, shapes=SHAPES)

    async def upload(self, uid: int, data: bytes, *, key_uid: int | None = None, window=W):
        key = f"gradient-{window}-{uid if key_uid is None else key_uid}-v{V}.safetensors"
        await self.base.open(bucket(uid)).put(key, data)

    async def gather(self, uids, *, timeout: float = 10.0, **kw) -> GatherResult:
        settings = kw.pop("settings", GatherSettings(fetch=FetchSettings(timeout=timeout)))
        kw.setdefault("runner", Synchronous())  # a fake clock sees every step
        return await gather(self.me, self.buckets, uids, W, self.expected, settings=settings, **kw)


def slugs(result: GatherResult) -> dict[int, str]:
    """skipped reasons as `status: reason-slug` (the human detail after it dropped)."""
    out = {}
    for uid, text in result.skipped.items():
        parts = text.split(": ")
        out[uid] = ": ".join(parts[:2]) if len(parts) > 1 else parts[0]
    return out


__all__ = ["NO_FAULT", "Fault"]
