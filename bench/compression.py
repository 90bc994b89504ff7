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

import argparse
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import machine, stats
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
GOAL_SECONDS = 0.200
GOAL_BYTES = 750_000
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


def _timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(repeats):
        gc.collect()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure(
    name: str, compressor: Compressor, grads, device: str, repeats: int, sync
) -> dict[str, object]:
    shapes = {n: tuple(t.shape) for n, t in grads.items()}
    meta = codec.PayloadMeta(window=1, uid=1, hotkey="bench", global_step=1, version=VERSION)
    expected = codec.Expected(version=VERSION, codec=compressor, shapes=shapes, window=1, uid=1)
    compressor.encode(grads)  # warm-up: plans, buffers, allocator
    held: dict[str, object] = {}

    def encode() -> None:
        held["data"] = codec.encode(compressor.encode(grads), meta)

    def decode() -> None:
        held.pop("dense", None)  # the previous result is freed first, as a consumer would
        held["dense"] = codec.decode(held["data"], expected).dense(compressor, device)

    enc = _timed(encode, repeats, sync)
    decode()
    dec = _timed(decode, repeats, sync)
    held.pop("dense", None)
    # Peers are folded in batches (core/compression/cpu_fold.py), so one add may only queue:
    # time a whole gather's worth of peers, the final result included, per peer.
    peers = 32 if name != "dense (no compression)" else 4

    def fold() -> None:
        aggregator = Aggregator(compressor, shapes, device=device)
        for _ in range(peers):
            compressed = codec.decode(held["data"], expected).compressed
            aggregator.add(compressed, aggregator.prepare(compressed))
        aggregator.finish()

    acc = [t / peers for t in _timed(fold, repeats, sync)]
    data = held["data"]
    payload = codec.decode(data, expected)
    total = [e + d for e, d in zip(enc, dec, strict=True)]
    return {
        "name": name,
        "spec": dict(compressor.spec),
        "encode": stats(enc),
        "decode": stats(dec),
        "encode_plus_decode": stats(total),
        "decode_into_aggregate": stats(acc),
        "payload_bytes": len(data),
        "tensor_bytes": payload.compressed.nbytes(),
        "estimate_bytes": compressor.estimate_bytes(shapes),
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
    cases: list[tuple[str, Compressor]] = [
        ("default (top-k 64, chunk 64, 4 bins, no DCT)", default_compressor()),
        ("top-k only (float32 values)", topk_only_compressor()),
    ]
    if not quick:
        cases.append(("default + DCT", TopKCompressor(TopKParams(use_dct=True))))
        cases.append(("dense (no compression)", DenseCompressor()))
    results = [measure(name, c, grads, device, repeats, sync) for name, c in cases]
    default = results[0]
    return {
        "benchmark": "compression",
        "model_params": n_params,
        "dense_float32_bytes": 4 * n_params,
        "machine": machine(device),
        "quick": quick,
        "goals": {
            "encode_plus_decode_median_s": GOAL_SECONDS,
            "payload_bytes": GOAL_BYTES,
            "met_time": default["encode_plus_decode"]["median_s"] <= GOAL_SECONDS,
            "met_bytes": default["payload_bytes"] <= GOAL_BYTES,
        },
        "accuracy": accuracy(grads),
        "cases": results,
    }


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
    g, a = result["goals"], result["accuracy"]
    lines += [
        "",
        f"Goals (default case): encode+decode median <= "
        f"{g['encode_plus_decode_median_s'] * 1e3:.0f} ms: "
        f"{'met' if g['met_time'] else 'NOT met'}; "
        f"payload <= {g['payload_bytes']:,} bytes: {'met' if g['met_bytes'] else 'NOT met'}.",
        f"Cosine of the default (4-bin) decode vs exact top-k: "
        f"{a['cosine_default_vs_exact_topk']:.4f}; exact top-k vs the dense gradient: "
        f"{a['cosine_exact_topk_vs_dense_gradient']:.4f} (Gaussian test gradient).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs, default and top-k only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    result = run(quick=args.quick, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compression.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compression.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
