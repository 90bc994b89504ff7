"""Gather against raw GETs over shaped links: 1 Gbps with a 20 ms round trip, 100 Mbps with 80 ms.

    python -m bench.shaped [--quick] [--out bench/results]

The benchmark re-executes itself under `unshare -n` (as root; `unshare -rn` otherwise): a
network namespace of its own, with only a loopback device, gone when the process exits. In it
a SeaweedFS server gives each peer a bucket and key pair of its own; the clients reach it
through bench/delay_proxy.py (a separate process, so that it does not share the gather's
GIL), which adds half the round trip in each direction. `tc` shapes the rate with an htb
class for each direction of the proxy's port alone: the leg from the proxy to the server stays
unshaped, so the rate is the client's link and nothing else.

For each link and N of 20 and 64 peers (--quick: 20, one round), in rotating order, it times
a fresh client's first (cold) and second (warm) window of: a raw GET of every payload with
boto3 and with obstore (bench.gather's Boto3Raw and ObstoreRaw) and the gather through the
obstore adapter. The gather's second window is started by a timer at a window's upload
deadline (every payload is in its bucket by then), as a neuron's is, and also gives the time
from that deadline to the aggregate being ready. `link_s` is what the payloads alone take at
the link's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import attrs

from adapters.storage.obstore_store import ObstoreStoreOpener
from bench.common import cell, machine, parser, save, stats
from bench.compression import gradient, model_shapes
from bench.gather import (
    CONCURRENCY,
    DISTINCT,
    Boto3Raw,
    GatherRun,
    ObstoreRaw,
    _peer_server,
    _two_windows,
    _weed,
)
from bench.peers import KINDS, VERSION, timed_row, upload
from core.codec import Expected
from core.compression import default_compressor
from ports import Bucket

ROOT = Path(__file__).resolve().parents[1]
LINKS = (
    {"name": "1 Gbps, 20 ms RTT", "mbit": 1000, "rtt_ms": 20},
    {"name": "100 Mbps, 80 ms RTT", "mbit": 100, "rtt_ms": 80},
)
SIZES = (20, 64)
ROUNDS = 3
GOAL = 1.1  # gather / raw GET, when the link is the limit
LEAD = 0.05  # seconds from arming the timer to the deadline


def shaping(mbit: int, port: int) -> list[list[str]]:
    """tc commands: `mbit` each way for traffic to and from `port` on lo, the rest unshaped.

    lo's packets are up to 64 KiB (offloads), so the bucket holds several, or the class would
    shape below its rate; 5 ms at the rate is little against a window's transfer."""
    burst = f"{max(mbit * 1_000_000 // 8 // 200, 256 << 10)}b"
    limited = f"rate {mbit}mbit ceil {mbit}mbit burst {burst} cburst {burst} quantum 65536"
    unlimited = "rate 100gbit burst 4mb quantum 200000"  # the proxy's leg to the server
    match = "tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip"
    lines = [
        "tc qdisc add dev lo root handle 1: htb default 30",
        f"tc class add dev lo parent 1: classid 1:10 htb {limited}",
        f"tc class add dev lo parent 1: classid 1:20 htb {limited}",
        f"tc class add dev lo parent 1: classid 1:30 htb {unlimited}",
        f"{match} sport {port} 0xffff flowid 1:10",
        f"{match} dport {port} 0xffff flowid 1:20",
    ]
    return [line.split() for line in lines]


UNSHAPE = ["tc", "qdisc", "del", "dev", "lo", "root"]


def _sh(cmd: list[str], check: bool = True) -> None:
    """ip and tc: quick, and only ever run between timed windows."""
    subprocess.run(cmd, check=check)


class ProxyProcess:
    """bench.delay_proxy in a process of its own, in front of 127.0.0.1:`upstream`."""

    def __init__(self, upstream: int, delay: float) -> None:
        self._proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.delay_proxy"),
                *("--upstream", f"127.0.0.1:{upstream}", "--delay-ms", str(delay * 1e3)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip():
            self.close()
            raise RuntimeError("bench.delay_proxy did not start")
        self.port = int(line)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


async def gather_windows(run: GatherRun, peers: dict[int, Bucket]) -> tuple[float, ...]:
    """A fresh gather's first (cold) and second (warm) window, the second started by a timer
    at a window's upload deadline (every payload is in its bucket by then), as a neuron's
    is: (cold, warm, seconds from the deadline to the aggregate)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await run.window(peers)
    cold = loop.time() - start
    deadline = loop.time() + LEAD
    await asyncio.sleep(deadline - loop.time())
    start = loop.time()
    await run.window(peers)
    end = loop.time()
    return cold, end - start, end - deadline


async def link_case(
    link: dict, server_port: int, buckets: dict[int, Bucket], expected: Expected, quick: bool
) -> dict[str, object]:
    sizes = SIZES[:1] if quick else SIZES
    rounds = 1 if quick else ROUNDS
    with shaped_link(link, server_port) as proxy:
        via = {u: attrs.evolve(b, endpoint=proxy.endpoint) for u, b in buckets.items()}
        kinds = {
            "raw_boto3": Boto3Raw,
            "raw_obstore": ObstoreRaw,
            "gather_obstore": lambda: GatherRun(ObstoreStoreOpener, expected),
        }
        # Untimed: the sum buffers and per-model caches a neuron builds once per process.
        await _two_windows(kinds["gather_obstore"], {0: via[0]})
        times: dict[tuple, list[float]] = defaultdict(list)
        for r in range(rounds):
            for n in sizes:
                peers = {uid: via[uid] for uid in range(n)}
                for kind in KINDS[r % 3 :] + KINDS[: r % 3]:  # rotate against drift
                    if kind.startswith("gather"):
                        run = kinds[kind]()
                        try:
                            cold, warm, ready = await gather_windows(run, peers)
                        finally:
                            run.close()
                        times[("deadline", n)].append(ready)
                    else:
                        cold, warm = await _two_windows(kinds[kind], peers)
                    times[(kind, n, "cold")].append(cold)
                    times[(kind, n, "warm")].append(warm)
    return {**link, "rounds": rounds, "times": times}


def _rows(link: dict, payload_bytes: int) -> list[dict[str, object]]:
    times = link.pop("times")
    rows = []
    for n in sorted({k[1] for k in times}):
        link_s = n * payload_bytes * 8 / (link["mbit"] * 1e6)
        for w in ("cold", "warm"):
            row: dict[str, object] = {"peers": n, "window": w, "link_s": link_s}
            med = timed_row(row, lambda k, n=n, w=w: times[(k, n, w)])
            row["link_share_of_raw_obstore"] = link_s / med["raw_obstore"]
            if w == "warm":
                row["deadline_to_ready"] = stats(times[("deadline", n)])
            rows.append(row)
    return rows


async def inner(quick: bool) -> dict[str, object]:
    loopback_up()
    sizes = SIZES[:1] if quick else SIZES
    started = time.perf_counter()
    server, buckets = _peer_server(_weed(), max(sizes))
    try:
        comp, shapes = default_compressor(), model_shapes()
        compressed = [comp.encode(gradient(shapes, "cpu", seed)) for seed in range(DISTINCT)]
        payload_bytes = await upload(buckets, compressed)
        setup_s = time.perf_counter() - started
        expected = Expected(version=VERSION, codec=comp, shapes=shapes)
        links = [
            await link_case(link, server.ports["s3.port"], buckets, expected, quick)
            for link in LINKS
        ]
    finally:
        server.destroy()
    for link in links:
        link["rows"] = _rows(link, payload_bytes)
    return {
        "benchmark": "shaped",
        "machine": machine("cpu"),
        "quick": quick,
        "concurrency": CONCURRENCY,
        "payload_bytes": payload_bytes,
        "setup_s": setup_s,
        "goal_gather_vs_raw_max": GOAL,
        "links": links,
    }


def _namespace_command() -> list[str] | None:
    """unshare's arguments for a fresh network namespace here, or None where none can be
    made or shaped (no unshare, no privilege, no iproute2)."""
    if not (shutil.which("ip") and shutil.which("tc")):
        return None
    for cmd in (["unshare", "-n"], ["unshare", "-rn"]):
        try:
            ok = subprocess.run([*cmd, "true"], capture_output=True, check=False).returncode == 0
        except FileNotFoundError:
            return None
        if ok:
            return cmd
    return None


def in_namespace(module: str, args: list[str], name: str) -> dict[str, object]:
    """`python -m <module> --inner <json> <args>` in a network namespace of its own, and the
    result it writes; a `skipped` result where no namespace can be made or shaped."""
    ns = _namespace_command()
    if ns is None:
        return {
            "benchmark": name,
            "quick": "--quick" in args,
            "skipped": "no network namespace to shape: `unshare -n` needs root (or "
            "`unshare -rn` user namespaces), and `ip` and `tc` (iproute2)",
        }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [*ns, sys.executable, "-m", module, "--inner", str(out), *args]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())


def loopback_up() -> None:
    """A fresh namespace's loopback is down: first thing in it, before any server."""
    _sh(["ip", "link", "set", "lo", "up"])


@contextlib.contextmanager
def shaped_link(link: dict, upstream: int) -> Iterator[ProxyProcess]:
    """A delay proxy in front of 127.0.0.1:`upstream` with `link`'s rate on its port, inside
    the namespace; unshaped and stopped on the way out."""
    proxy = ProxyProcess(upstream, link["rtt_ms"] / 2e3)
    try:
        for cmd in shaping(link["mbit"], proxy.port):
            _sh(cmd)
        yield proxy
    finally:
        _sh(UNSHAPE, check=False)
        proxy.close()


def run(quick: bool = False) -> dict[str, object]:
    """The benchmark in a network namespace of its own (this module again, with --inner)."""
    return in_namespace("bench.shaped", ["--quick"] if quick else [], "shaped")


def markdown(result: dict) -> str:
    if "skipped" in result:
        return f"Shaped networks: skipped ({result['skipped']})."
    lines = [
        f"Shaped links (tc htb on the client's link, latency from a loopback delay proxy), "
        f"{result['payload_bytes']:,}-byte payloads, a bucket and key pair per peer, "
        f"concurrency {result['concurrency']}; medians of {result['links'][0]['rounds']} round(s) "
        "in rotating order (min in brackets), seconds. Cold: a fresh client's first window; "
        "warm: its second. Link: the payloads alone at the link's rate.",
        "",
        "| link | peers | window | link | raw GET boto3 | raw GET obstore | gather obstore "
        "| gather / raw obstore | gather / raw boto3 | deadline to aggregate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    for link in result["links"]:
        for r in link["rows"]:
            ready = cell(r["deadline_to_ready"]) if "deadline_to_ready" in r else "-"
            lines.append(
                f"| {link['name']} | {r['peers']} | {r['window']} | {r['link_s']:.3f} | "
                + " | ".join(cell(r[k]) for k in KINDS)
                + f" | {r['gather_vs_raw_obstore']:.2f}x | {r['gather_vs_raw_boto3']:.2f}x | "
                f"{ready} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    cli = parser(__doc__, "20 peers, one round")
    cli.add_argument("--inner", metavar="JSON", help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.inner:
        result = asyncio.run(inner(args.quick))
        Path(args.inner).write_text(json.dumps(result, indent=2) + "\n")
        return result
    result = run(args.quick)
    save(args.out, "shaped", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
