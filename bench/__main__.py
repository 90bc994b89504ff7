"""Every benchmark in one command: `python -m bench [--quick]` (or `make bench`).

Runs the compression, gather, checkpoint, shaped-network and large-model benchmarks and
(the full run only) boto3 against obstore with a bucket per peer, each figure beside its
baseline measured in the same run, and writes bench/results/latest.json
(schema in docs/benchmarks.md), bench/results/latest.md and, when matplotlib is installed
(`pip install -e .[bench]`), bench/results/gather.png (gather time against peers, with both
baselines). `--vm-workarounds` turns on the checkpoint benchmark's workarounds for VMs whose
hypervisor reclaims freed memory (see bench/checkpoint.py).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import checkpoint, clients, compression, gather, large, shaped
from bench.common import machine, parser, vm_workarounds_flag

SCHEMA = 1


def chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = result["cases"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("gather", "gather (decode, validate, normalise, aggregate)"),
        ("raw_get", "raw concurrent GET"),
        ("torch_save_baseline", "torch.save / torch.load path"),
    ):
        timed = [(c["peers"], c[key]["median_s"]) for c in cases if c[key]]  # --quick: not all
        ax.plot(*zip(*timed, strict=True), marker="o", label=label)
    ax.set_xlabel("peers")
    ax.set_ylabel("seconds (median)")
    ax.set_title("Gather over SeaweedFS on loopback")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def render(latest: dict, out: Path) -> str:
    """latest.md (and the chart) from a latest.json: also `python -m bench --render`."""
    results = latest["benchmarks"]
    sections = [
        f"# Benchmark results ({'quick' if latest['quick'] else 'full'} run, "
        f"{latest['created_at'][:19]} UTC, {latest['machine']['cpu_count']} CPUs, "
        f"{latest['wall_seconds']:.0f} s)",
        "",
        "## Compression",
        "",
        compression.markdown(results["compression"]),
        "## Gather",
        "",
        gather.markdown(results["gather"]),
        "## Checkpoints",
        "",
        checkpoint.markdown(results["checkpoint"]),
    ]
    if chart(results["gather"], out / "gather.png"):
        sections += ["", "![gather time against peers](gather.png)", ""]
    for name, title, module in (
        ("shaped", "Shaped networks", shaped),
        ("large", "Large model", large),
        ("clients", "S3 clients (a bucket and keys per peer)", clients),
    ):
        if name in results:  # results from before these benchmarks have none
            sections += ["", f"## {title}", "", module.markdown(results[name])]
    text = "\n".join(sections)
    (out / "latest.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> dict:
    cli = parser(__doc__, "fewer sizes and runs (< 2 min)")
    cli.add_argument("--render", action="store_true", help="only re-render latest.json")
    vm_workarounds_flag(cli)
    args = cli.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        latest = json.loads((out / "latest.json").read_text())
        print(render(latest, out))
        return latest
    started = time.perf_counter()
    results = {}
    for name, module in (
        ("compression", compression),
        ("gather", gather),
        ("checkpoint", checkpoint),
        ("shaped", shaped),
        ("large", large),
        ("clients", clients),
    ):
        # The clients' case runs 20 to 256 peers four ways, cold and warm (~2.5 minutes):
        # too long for a quick run, whose shaped and large cases use the default client.
        if args.quick and name == "clients":
            continue
        t0 = time.perf_counter()
        extra = {"vm_workarounds": args.vm_workarounds} if module is checkpoint else {}
        results[name] = module.run(quick=args.quick, **extra)
        results[name]["wall_seconds"] = time.perf_counter() - t0
        print(f"{name}: {results[name]['wall_seconds']:.0f} s", flush=True)
    latest = {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "machine": machine("cpu"),
        "wall_seconds": time.perf_counter() - started,
        "benchmarks": results,
    }
    (out / "latest.json").write_text(json.dumps(latest, indent=2) + "\n")
    text = render(latest, out)
    print(text)
    return latest


if __name__ == "__main__":
    main()
