"""Compression benchmark: encode/decode time and payload size on a 25,174,528-parameter
transformer-shaped gradient at Templar's default hparams (topk 64, chunk 64, 4 bins over 6
sigma, no DCT), plus the top-k-only and DCT variants and the dense baseline.

    python -m bench.compression [--quick] [--device cpu|cuda] [--out bench/results]

`run()` returns the result dict (the future `python -m bench` runner calls it); `main()`
also writes compression.json and compression.md. Encode = compress + serialise to payload
bytes; decode = validate the bytes (codec.decode) + dense tensors of the parameter shapes;
"fold" = validate + add into an aggregate, per peer, timed over 32 peers and the final
result (4 for the dense case): what gather does per peer, batching included.
"""

from __future__ import annotations

import asyncio
import statistics

import torch

from bench.common import machine, parser, save, stats, timed
from bench.templar_baseline import TemplarSteps
from core import codec
from core.aggregate import Aggregator
from core.compression import (
    Compressor,
    DenseCompressor,
    TopKCompressor,
    TopKParams,
    default_compressor,
    topk_only_compressor,
)

TARGET_PARAMS = 25_174_528
GOAL_BYTES = 540_000
GOAL_BYTES_RATIO = 0.5  # of the Templar-steps baseline's payload
GOAL_TIME_RATIO = 0.3  # of its encode + decode median
GOAL_FOLD_RATIO = 1.1  # validate + fold per peer against the previous index code
# Back-to-back pairs of that comparison a round, in alternating order: a pair meets the same
# load, where the per-case medians of a round-robin swing by 10-15% between runs.
FOLD_PAIRS = 3
DEFAULT = "default (codec v2: Elias-Fano indices; top-k 64, chunk 64, 4 bins, no DCT)"
PREVIOUS = "default, previous version (12-bit packed indices)"
TORCH_SELECT = "default, torch selection (the CUDA path, run on the CPU)"
VERSION = "bench"


def model_shapes(layers: int = 8, d: int = 512, ff: int = 2048) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            shapes[f"layers.{i}.attn.{name}.weight"] = (d, d)
        shapes[f"layers.{i}.mlp.up.weight"] = (ff, d)
        shapes[f"layers.{i}.mlp.down.weight"] = (d, ff)
        shapes[f"layers.{i}.attn_norm.weight"] = (d,)
        shapes[f"layers.{i}.mlp_norm.weight"] = (d,)
    shapes["final_norm.weight"] = (d,)
    return shapes


def gradient(shapes, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen).to(device) for n, s in shapes.items()}


class Case:
    """One compressor's encode, decode and validate + fold, run a round at a time so that
    every case of a run meets the same machine load (see `run`)."""

    def __init__(self, name: str, compressor: Compressor, grads, device: str, sync) -> None:
        self.name, self.compressor, self.grads, self.sync = name, compressor, grads, sync
        self.device = device
        self.shapes = {n: tuple(t.shape) for n, t in grads.items()}
        self.meta = codec.PayloadMeta(
            window=1, uid=1, hotkey="bench", global_step=1, version=VERSION
        )
        self.expected = codec.Expected(
            version=VERSION, codec=compressor, shapes=self.shapes, window=1, uid=1
        )
        self.times: dict[str, list[float]] = {"encode": [], "decode": [], "fold": []}
        self.held: dict[str, object] = {}
        # Peers are folded in batches (core/compression/cpu_fold.py), so one add may only
        # queue: time a whole gather's worth of peers, the final result included, per peer.
        self.peers = 4 if isinstance(compressor, DenseCompressor) else 32
        self._encode()  # warm-up: plans, buffers, allocator, compiled kernels
        self._decode()
        self._fold()

    def _encode(self) -> None:
        self.held["data"] = codec.encode(self.compressor.encode(self.grads), self.meta)

    def _decode(self) -> None:
        self.held.pop("dense", None)  # the previous result is freed first, as a consumer would
        payload = codec.decode(self.held["data"], self.expected)
        self.held["dense"] = payload.dense(self.compressor, self.device)

    def _fold(self) -> None:
        asyncio.run(self._fold_all())

    async def _fold_all(self) -> None:
        aggregator = Aggregator(self.compressor, self.shapes, device=self.device)
        for _ in range(self.peers):
            checked = codec.decode(self.held["data"], self.expected, on_loop=True).checked
            await aggregator.add(aggregator.prepare(checked, on_loop=True))
        aggregator.result()

    def fold_seconds(self) -> float:
        """One validate + fold of the peers, per peer."""
        return timed(self._fold, sync=self.sync, collect=True).seconds / self.peers

    def round(self) -> None:
        self.times["encode"].append(timed(self._encode, sync=self.sync, collect=True).seconds)
        self.times["decode"].append(timed(self._decode, sync=self.sync, collect=True).seconds)
        self.held.pop("dense", None)
        self.times["fold"].append(self.fold_seconds())

    def result(self) -> dict[str, object]:
        data = self.held["data"]
        payload = codec.decode(data, self.expected)
        enc, dec = self.times["encode"], self.times["decode"]
        return {
            "name": self.name,
            "spec": dict(self.compressor.spec),
            "encode": stats(enc),
            "decode": stats(dec),
            "encode_plus_decode": stats([e + d for e, d in zip(enc, dec, strict=True)]),
            "decode_into_aggregate": stats(self.times["fold"]),
            "payload_bytes": len(data),
            "tensor_bytes": payload.compressed.nbytes(),
            "estimate_bytes": self.compressor.estimate_bytes(self.shapes),
        }


class TemplarCase:
    """The Templar-steps baseline (bench/templar_baseline.py): encode = compress every
    parameter + torch.save, decode = torch.load + decompress to dense tensors."""

    name = "Templar's steps (baseline, 12-bit indices, 8-bit codes, torch.save)"

    def __init__(self, grads, sync) -> None:
        self.grads, self.sync = grads, sync
        self.shapes = {n: tuple(t.shape) for n, t in grads.items()}
        self.steps = TemplarSteps()
        self.times: dict[str, list[float]] = {"encode": [], "decode": []}
        self.held: dict[str, object] = {}
        self._encode()
        self._decode()

    def _encode(self) -> None:
        self.held["data"] = self.steps.encode(self.grads)

    def _decode(self) -> None:
        self.held.pop("dense", None)
        self.held["dense"] = self.steps.decode(self.held["data"], self.shapes)

    def round(self) -> None:
        self.times["encode"].append(timed(self._encode, sync=self.sync, collect=True).seconds)
        self.times["decode"].append(timed(self._decode, sync=self.sync, collect=True).seconds)
        self.held.pop("dense", None)

    def result(self) -> dict[str, object]:
        enc, dec = self.times["encode"], self.times["decode"]
        return {
            "name": self.name,
            "encode": stats(enc),
            "decode": stats(dec),
            "encode_plus_decode": stats([e + d for e, d in zip(enc, dec, strict=True)]),
            "payload_bytes": len(self.held["data"]),
        }


def accuracy(grads) -> dict[str, float]:
    """Cosine of the default (quantised) decode against exact top-k, over the whole model."""
    exact = topk_only_compressor()
    quantised = default_compressor()
    names = list(grads)

    def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].flatten() for n in names])

    a = flat(exact.decode(exact.encode(grads)))
    b = flat(quantised.decode(quantised.encode(grads)))
    g = flat(grads)
    cos = torch.nn.functional.cosine_similarity
    return {
        "cosine_default_vs_exact_topk": float(cos(a, b, 0)),
        "cosine_exact_topk_vs_dense_gradient": float(cos(a, g, 0)),
    }


def run(quick: bool = False, device: str = "cpu") -> dict[str, object]:
    shapes = model_shapes()
    n_params = sum(torch.Size(s).numel() for s in shapes.values())
    assert n_params == TARGET_PARAMS, n_params
    grads = gradient(shapes, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    repeats = 5 if quick else 11
    compressors: list[tuple[str, Compressor]] = [
        (DEFAULT, default_compressor()),
        (PREVIOUS, TopKCompressor(TopKParams(index_code="packed"))),
        (TORCH_SELECT, TopKCompressor(fused=False)),
        ("top-k only (float32 values)", topk_only_compressor()),
    ]
    if not quick:
        compressors.append(("default + DCT", TopKCompressor(TopKParams(use_dct=True))))
        compressors.append(("dense (no compression)", DenseCompressor()))
    cases = [Case(name, c, grads, device, sync) for name, c in compressors]
    templar = TemplarCase(grads, sync) if device == "cpu" else None
    # Round-robin: each round runs every case once, so a load that comes and goes on a
    # shared machine falls on all of them alike; and each round starts one case later, as
    # the first case of a round measurably pays for the memory the last one freed.
    order = [*cases, *([templar] if templar else [])]
    fold_ratios: list[float] = []
    for r in range(repeats):
        for case in order[r % len(order) :] + order[: r % len(order)]:
            case.round()
        for i in range(FOLD_PAIRS):
            pair = (cases[0], cases[1]) if (r + i) % 2 == 0 else (cases[1], cases[0])
            seconds = {id(c): c.fold_seconds() for c in pair}
            fold_ratios.append(seconds[id(cases[0])] / seconds[id(cases[1])])
    results = [c.result() for c in cases]
    default = results[0]
    goals: dict[str, object] = {
        "payload_bytes": GOAL_BYTES,
        "met_bytes": default["payload_bytes"] <= GOAL_BYTES,
        "fold_vs_previous": statistics.median(fold_ratios),
        "fold_vs_previous_pairs": len(fold_ratios),
        "fold_vs_previous_range": [min(fold_ratios), max(fold_ratios)],
    }
    goals["met_fold"] = goals["fold_vs_previous"] <= GOAL_FOLD_RATIO
    baseline = templar.result() if templar else None
    if baseline is not None:
        goals["bytes_vs_templar"] = default["payload_bytes"] / baseline["payload_bytes"]
        goals["time_vs_templar"] = (
            default["encode_plus_decode"]["median_s"] / baseline["encode_plus_decode"]["median_s"]
        )
        goals["met_bytes_vs_templar"] = goals["bytes_vs_templar"] <= GOAL_BYTES_RATIO
        goals["met_time_vs_templar"] = goals["time_vs_templar"] <= GOAL_TIME_RATIO
    return {
        "benchmark": "compression",
        "model_params": n_params,
        "dense_float32_bytes": 4 * n_params,
        "machine": machine(device),
        "quick": quick,
        "goals": goals,
        "accuracy": accuracy(grads),
        "bits_per_index": index_bits(default["spec"], shapes),
        "templar_baseline": baseline,
        "cases": results,
    }


def index_bits(spec, shapes) -> float:
    """Bits per kept entry of the default payload's index tensor."""
    comp = TopKCompressor(TopKParams(index_code=spec.get("index_code", "packed")))
    layout = comp.layout(shapes)
    entries = comp._plans.get(sorted(shapes.items())).total_entries
    return 8 * layout["idx"].shape[0] / entries


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Compression benchmark",
        "",
        f"Model: {result['model_params']:,} parameters (dense float32 "
        f"{result['dense_float32_bytes']:,} bytes). Device: {m['device']}"
        f"{' ' + m['cuda'] if m['cuda'] else ''}, {m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}.",
        "",
        "| case | encode min / median ms | decode min / median ms | enc+dec median ms "
        "| validate + fold, per peer of 32 (min / median ms) | payload bytes | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        e, d, t = c["encode"], c["decode"], c["encode_plus_decode"]
        f = c["decode_into_aggregate"]
        ratio = result["dense_float32_bytes"] / c["payload_bytes"]
        lines.append(
            f"| {c['name']} | {e['min_s'] * 1e3:.1f} / {e['median_s'] * 1e3:.1f} "
            f"| {d['min_s'] * 1e3:.1f} / {d['median_s'] * 1e3:.1f} "
            f"| {t['median_s'] * 1e3:.1f} "
            f"| {f['min_s'] * 1e3:.1f} / {f['median_s'] * 1e3:.1f} "
            f"| {c['payload_bytes']:,} | {ratio:.0f}x |"
        )
    b = result.get("templar_baseline")
    if b:
        e, d, t = b["encode"], b["decode"], b["encode_plus_decode"]
        lines.append(
            f"| {b['name']} | {e['min_s'] * 1e3:.1f} / {e['median_s'] * 1e3:.1f} "
            f"| {d['min_s'] * 1e3:.1f} / {d['median_s'] * 1e3:.1f} "
            f"| {t['median_s'] * 1e3:.1f} | - | {b['payload_bytes']:,} "
            f"| {result['dense_float32_bytes'] / b['payload_bytes']:.0f}x |"
        )
    g, a = result["goals"], result["accuracy"]

    def met(flag: bool) -> str:
        return "met" if flag else "NOT met"

    lines += ["", f"Index bits per kept entry (default): {result['bits_per_index']:.3f}.", ""]
    if "bytes_vs_templar" in g:
        lines += [
            f"Goals (default case against the Templar-steps baseline, same run): payload "
            f"{g['bytes_vs_templar']:.3f}x its bytes (goal <= {GOAL_BYTES_RATIO}x): "
            f"{met(g['met_bytes_vs_templar'])}; encode+decode median "
            f"{g['time_vs_templar']:.3f}x (goal <= {GOAL_TIME_RATIO}x): "
            f"{met(g['met_time_vs_templar'])}.",
        ]
    lines += [
        f"Payload <= {g['payload_bytes']:,} bytes: {met(g['met_bytes'])}. Validate + fold per "
        f"peer {g['fold_vs_previous']:.3f}x the previous index code's, the median of "
        f"{g['fold_vs_previous_pairs']} back-to-back pairs (range "
        f"{g['fold_vs_previous_range'][0]:.2f}-{g['fold_vs_previous_range'][1]:.2f}x; goal <= "
        f"{GOAL_FOLD_RATIO}x): {met(g['met_fold'])}.",
        f"Cosine of the default (4-bin) decode vs exact top-k: "
        f"{a['cosine_default_vs_exact_topk']:.4f}; exact top-k vs the dense gradient: "
        f"{a['cosine_exact_topk_vs_dense_gradient']:.4f} (Gaussian test gradient).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    cli = parser(__doc__, "5 runs, default and top-k only")
    cli.add_argument("--device", default="cpu")
    args = cli.parse_args(argv)
    result = run(quick=args.quick, device=args.device)
    save(args.out, "compression", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
