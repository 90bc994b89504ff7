"""Gather of a ~1B-parameter model's payloads against raw GETs: throughput and peak RSS.

    python -m bench.large [--quick] [--link] [--out bench/results]

The payload is generated, not trained: the project's default compressor encodes one random
gradient of the model's shapes (20 layers of d 2048 and ff 8192: 1,006,716,928 parameters;
--quick: 1 layer, 50,337,792) in a child process, so that the 4 GB dense gradient and the
encoder's scratch never count in this process's RSS. Every peer uploads that gradient under
its own meta (uid, hotkey) to a bucket and key pair of its own on SeaweedFS on 127.0.0.1.

For N of 20 and 64 peers, in rotating order, on warm clients (each built and used once,
untimed, as a neuron's are after its first window), it times a raw GET of every payload with
boto3 and with obstore (bench.gather's Boto3Raw and ObstoreRaw) and the gather through the
obstore adapter, with each run's peak RSS growth. The gather keeps its sum (the dense model,
float32) between windows: the table adds it to the gather's growth. Memory should follow
the concurrency (CONCURRENCY payloads in flight), not N.

`--link`: the same over bench.shaped's 1 Gbps link with a 20 ms round trip (a network
namespace of its own, as bench.shaped makes; written as `large_link.*`), where the link,
not the loopback server's copy, sets the raw GET's pace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import attrs
import torch

from adapters.storage.obstore_store import ObstoreStoreOpener
from bench.common import PeakRss, cell, machine, parser, save, timed_async
from bench.compression import gradient, model_shapes
from bench.gather import CONCURRENCY, Boto3Raw, GatherRun, ObstoreRaw, _peer_server, _weed
from bench.peers import KINDS, VERSION, timed_row, upload
from bench.shaped import LINKS, in_namespace, loopback_up, shaped_link
from core import payload_format
from core.codec import Expected
from core.compression import Compressed, cpu_fold, default_compressor
from core.compression.buffers import BUFFERS
from core.fetch import FetchSettings

MODEL = {"layers": 20, "d": 2048, "ff": 8192}
QUICK_MODEL = {"layers": 1, "d": 2048, "ff": 8192}
SIZES = (20, 64)
ROUNDS = 1  # a 64-peer window of the 1B model takes tens of seconds on 2 cores
GOAL = 1.25  # gather / raw GET
LINK = LINKS[0]  # 1 Gbps, 20 ms RTT


def _encode(model: dict[str, int]) -> Compressed:
    return default_compressor().encode(gradient(model_shapes(**model), "cpu", 0))


def generate(model: dict[str, int]) -> Compressed:
    """The compressed random gradient, made in a fresh process (its memory goes with it)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(_encode, model).result()


async def _run(quick: bool, link: dict | None = None) -> dict[str, object]:
    model = QUICK_MODEL if quick else MODEL
    rounds = ROUNDS
    shapes = model_shapes(**model)
    started = time.perf_counter()
    compressed = generate(model)
    generate_s = time.perf_counter() - started
    server, buckets = _peer_server(_weed(), max(SIZES))
    runners: dict[str, object] = {}
    shaped = contextlib.ExitStack()
    try:
        payload_bytes = await upload(buckets, [compressed])
        del compressed
        if link is not None:  # uploads go straight to the server; the gathers over the link
            proxy = shaped.enter_context(shaped_link(link, server.ports["s3.port"]))
            buckets = {u: attrs.evolve(b, endpoint=proxy.endpoint) for u, b in buckets.items()}
        expected = Expected(version=VERSION, codec=default_compressor(), shapes=shapes)
        runners = {
            "raw_boto3": Boto3Raw(),
            "raw_obstore": ObstoreRaw(),
            "gather_obstore": GatherRun(ObstoreStoreOpener, expected),
        }
        kept_before = BUFFERS.kept_bytes()  # other benchmarks' sums, in `python -m bench`
        first = {uid: buckets[uid] for uid in range(min(SIZES))}
        for runner in runners.values():  # untimed: clients, connections, the kept sum
            await runner.window(first)  # type: ignore[attr-defined]
        times: dict[tuple[str, int], list[float]] = defaultdict(list)
        rss: dict[tuple[str, int], list[int]] = defaultdict(list)
        for r in range(rounds):
            for n in SIZES:
                peers = {uid: buckets[uid] for uid in range(n)}
                for kind in KINDS[r % 3 :] + KINDS[: r % 3]:  # rotate against drift
                    with PeakRss() as peak:
                        window = runners[kind].window  # type: ignore[attr-defined]
                        t = await timed_async(window, peers)
                        times[(kind, n)].append(t.seconds)
                    rss[(kind, n)].append(peak.growth)
        kept = BUFFERS.kept_bytes() - kept_before
    finally:
        for runner in runners.values():
            runner.close()  # type: ignore[attr-defined]
        shaped.close()
        server.destroy()
    params = sum(torch.Size(s).numel() for s in shapes.values())
    # What the gather fetches at once: its concurrency, cut by the in-flight byte budget.
    bound = payload_format.NATIVE.size_limit(expected)
    slots = FetchSettings(concurrency=CONCURRENCY, max_bytes=bound).slots
    rows = []
    for n in SIZES:
        row: dict[str, object] = {"peers": n}
        med = timed_row(row, lambda k, n=n: times[(k, n)])
        if link is not None:
            row["link_s"] = n * payload_bytes * 8 / (link["mbit"] * 1e6)
        for k in KINDS:
            row[f"{k}_mb_per_s"] = n * payload_bytes / med[k] / 1e6
            growth = max(rss[(k, n)]) + (kept if k.startswith("gather") else 0)
            row[f"{k}_peak_rss_growth_bytes"] = growth
        rows.append(row)
    return {
        "benchmark": "large",
        "machine": machine("cpu"),
        "quick": quick,
        "link": link,
        "model_params": params,
        "dense_float32_bytes": 4 * params,
        "payload_bytes": payload_bytes,
        "generate_s": generate_s,
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "kept_buffer_bytes": kept,
        "gather_slots": slots,
        # The sum, the fold's two sets of batch arrays (a share of the sum, see cpu_fold),
        # and the payloads in flight; + 20%.
        "rss_budget_bytes": int(
            1.2 * (4 * params * (1 + cpu_fold.SUM_SHARE) + slots * payload_bytes)
        ),
        "goal_gather_vs_raw_max": GOAL,
        "rows": rows,
    }


def run(quick: bool = False) -> dict[str, object]:
    return asyncio.run(_run(quick))


def markdown(result: dict) -> str:
    if "skipped" in result:
        return f"Large model over a shaped link: skipped ({result['skipped']})."
    link = result.get("link")
    over = f"over a {link['name']} link" if link else "on loopback"
    lines = [
        f"Large model {over}: {result['model_params']:,} parameters, "
        f"{result['payload_bytes']:,}-byte payloads (the default compressor on a random "
        f"gradient), a bucket and key pair per peer, concurrency {result['concurrency']}, "
        f"warm clients; medians of {result['rounds']} round(s) in rotating order (min in "
        "brackets), seconds, and MB/s of payload. Peak RSS growth in MB over the run; the "
        f"gather's includes its kept sum ({result['kept_buffer_bytes'] / 1e6:,.0f} MB); budget "
        f"{result['rss_budget_bytes'] / 1e6:,.0f} MB (dense model, the fold's batch arrays: "
        f"{cpu_fold.SUM_SHARE:.3f} of it, payloads in flight; + 20%). The raw GETs fetch "
        f"{result['concurrency']} at once; the gather {result['gather_slots']} (its in-flight "
        "byte budget over the payload's size bound)."
        + (" Link: the payloads alone at the link's rate." if link else ""),
        "",
        "| peers |"
        + (" link |" if link else "")
        + " raw GET boto3 | raw GET obstore | gather obstore | MB/s boto3 / obstore / "
        "gather | gather / raw obstore | gather / raw boto3 | peak RSS growth MB, boto3 / "
        "obstore / gather |",
        "|---|" + ("---|" if link else "") + "---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mbs = " / ".join(f"{r[f'{k}_mb_per_s']:.0f}" for k in KINDS)
        mem = " / ".join(f"{r[f'{k}_peak_rss_growth_bytes'] / 1e6:,.0f}" for k in KINDS)
        lines.append(
            f"| {r['peers']} | "
            + (f"{r['link_s']:.2f} | " if link else "")
            + " | ".join(cell(r[k], 2) for k in KINDS)
            + f" | {mbs} | {r['gather_vs_raw_obstore']:.2f}x | "
            f"{r['gather_vs_raw_boto3']:.2f}x | {mem} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    cli = parser(__doc__, "a 50M-parameter model")
    cli.add_argument("--link", action="store_true", help="over a shaped 1 Gbps / 20 ms link")
    cli.add_argument("--inner", metavar="JSON", help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.inner:  # in the namespace bench.shaped.in_namespace made
        loopback_up()
        result = asyncio.run(_run(args.quick, LINK))
        Path(args.inner).write_text(json.dumps(result, indent=2) + "\n")
        return result
    if args.link:
        quick = ["--quick"] if args.quick else []
        result = in_namespace("bench.large", quick, "large_link")
    else:
        result = run(args.quick)
    save(args.out, "large_link" if args.link else "large", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
