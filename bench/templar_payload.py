"""Per-peer cost of reading a gradient, native format beside Templar's, in the same run.

    python -m bench.templar_payload [--quick] --out /tmp/bench

For the benchmark model (bench.compression.model_shapes, ~25M parameters) and the default
compressor, one payload in each format, then per peer (median of the runs, one torch
thread):

- native: `codec.decode` of the safetensors payload, then `Aggregator.add` (the gather's
  per-peer work);
- templar (this project): `core.templar.payload.decode` of the Templar-format payload
  (bounded zip, allow-listed pickle walk, checks), then `Aggregator.add`;
- templar's own path: `torch.load(weights_only=True)` of the same bytes, then Templar's
  decode steps per parameter (dequantise, unpack 12-bit indices, scatter into zeroed chunks,
  rearrange) and a dense add; the steps are written here from docs/templar.md, no code of
  Templar's is used.

Writes templar_payload.json and templar_payload.md under --out.
"""

from __future__ import annotations

import asyncio
import io

import torch

from bench.common import machine, parser, save, stats, timed
from bench.compression import gradient, model_shapes
from bench.templar_baseline import unpack12
from core import codec
from core.aggregate import Aggregator, Normalisation
from core.codec import Expected, PayloadMeta
from core.compression import TopKCompressor, TopKParams
from core.compression.chunking import largest_divisor_at_most
from core.templar import payload, writer


def templar_steps(data: bytes, shapes, total: dict[str, torch.Tensor], chunk: int) -> None:
    sd = torch.load(io.BytesIO(data), weights_only=True)["state_dict"]
    for name, shape in shapes.items():
        shift, _, _, lookup, _ = sd[name + "quant_params"]
        vals = sd[name + "vals"]
        v = lookup[vals.long()] + shift
        idx = unpack12(sd[name + "idxs"], vals.shape)
        if len(shape) == 1:
            w = largest_divisor_at_most(shape[0], chunk)
            x = torch.zeros(shape[0] // w, w)
            x.scatter_reduce_(-1, idx, v, reduce="mean", include_self=False)
            total[name].add_(x.reshape(shape))
        else:
            h = largest_divisor_at_most(shape[0], chunk)
            w = largest_divisor_at_most(shape[1], chunk)
            gy, gx = shape[0] // h, shape[1] // w
            x = torch.zeros(gy, gx, h * w)
            x.scatter_reduce_(-1, idx, v, reduce="mean", include_self=False)
            total[name].add_(x.view(gy, gx, h, w).permute(0, 2, 1, 3).reshape(shape))


def _time(fn, runs: int) -> dict[str, float]:
    fn()  # warm
    return stats([timed(fn).seconds for _ in range(runs)])


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    shapes = model_shapes()
    comp = TopKCompressor(TopKParams())
    compressed = comp.encode(gradient(shapes, "cpu"))
    native = codec.encode(
        compressed, PayloadMeta(window=1, uid=0, hotkey="h", global_step=1, version="bench")
    )
    templar = writer.encode(compressed, comp, window=1, global_step=1)
    expected = Expected(version="bench", codec=comp, shapes=shapes, window=1)
    runs = 5 if quick else 30
    agg = Aggregator(comp, shapes, normalisation=Normalisation.UNIT)
    total = {n: torch.zeros(s) for n, s in shapes.items()}

    loop = asyncio.new_event_loop()  # one loop for every add, as in a gather

    def add(checked) -> None:
        loop.run_until_complete(agg.add(agg.prepare(checked, on_loop=True)))

    def native_peer():
        add(codec.decode(native, expected, on_loop=True).checked)

    def templar_peer():
        add(payload.decode(templar, expected, on_loop=True).checked)

    return {
        "payload_bytes": {"native": len(native), "templar": len(templar)},
        "per_peer": {
            "native": _time(native_peer, runs),
            "templar": _time(templar_peer, runs),
            "templar_decode_only": _time(lambda: payload.decode(templar, expected), runs),
            "torch_load_only": _time(
                lambda: torch.load(io.BytesIO(templar), weights_only=True), runs
            ),
            "templar_own_path": _time(lambda: templar_steps(templar, shapes, total, 64), runs),
        },
        "machine": machine(),
    }


def render(result: dict) -> str:
    b, p = result["payload_bytes"], result["per_peer"]
    rows = [
        ("native: codec.decode + Aggregator.add", "native"),
        ("Templar format: core.templar decode + Aggregator.add", "templar"),
        ("Templar format: core.templar decode alone", "templar_decode_only"),
        ("Templar's path: torch.load(weights_only=True) alone", "torch_load_only"),
        ("Templar's path: torch.load + its decode steps + dense add", "templar_own_path"),
    ]
    lines = [
        f"Payload bytes: native {b['native']:,}, Templar format {b['templar']:,}",
        "",
        "| per peer | median ms | min ms |",
        "|---|---|---|",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {p[key]['median_s'] * 1e3:.1f} | {p[key]['min_s'] * 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    result = run(args.quick)
    save(args.out, "templar_payload", result, render(result))
    return result


if __name__ == "__main__":
    main()
