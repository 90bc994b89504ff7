"""Interoperability check against Templar's own compressor (not a test, not a benchmark).

    python -m bench.templar_interop --templar /path/to/templar [--site /path/with/einops]

Needs a checkout of github.com/tplr-ai/templar (only its `src/tplr/compress.py` is loaded,
beside a stub `tplr` package holding a logger, so none of its other dependencies are
needed) and `einops` importable (`--site` adds a folder to the path; nothing is installed
into this project's environment). Both directions, with and without the DCT, and a
bfloat16 model: Templar's compress + `torch.save` read by `core.templar.payload` and summed
by `Aggregator`, compared with Templar's `torch.load(weights_only=True)` + decompress; and
`core.templar.writer` output read by Templar's path. What it printed, and how this was
checked, is in docs/templar.md ("How interoperability was checked").
"""

import argparse
import asyncio
import importlib.util
import io
import math
import os
import sys
import tempfile
import types

import torch

from core.aggregate import Aggregator, Normalisation
from core.codec import Expected
from core.compression import TopKCompressor, TopKParams
from core.templar import payload as tpayload
from core.templar import writer as twriter

tc = None  # Templar's tplr.compress, loaded by main()
TOPK = 32
WINDOW = 11


def load_templar(checkout: str):
    stub = types.ModuleType("tplr")
    stub.logger = __import__("logging").getLogger("tplr")
    sys.modules["tplr"] = stub
    path = os.path.join(checkout, "src", "tplr", "compress.py")
    spec = importlib.util.spec_from_file_location("tplr.compress", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tplr.compress"] = module
    spec.loader.exec_module(module)
    return module


def model_of(dtype=torch.float32) -> torch.nn.Module:
    # chunks of 64 x 48 and 64 x 64, vector chunks of 64 and 40
    layers = [torch.nn.Linear(96, 128), torch.nn.ReLU(), torch.nn.Linear(128, 80)]
    return torch.nn.Sequential(*layers).to(dtype)


def templar_payload(model, grads, templar, use_dct, step, path) -> bytes:
    """What Templar's miner uploads: compress per parameter, the gradient dict with its
    metadata, `torch.save` to a file named as `Comms.put` names it."""
    transformer, compressor = templar
    gradient = {}
    for n, _ in model.named_parameters():
        encoded = transformer.encode(grads[n].clone(), use_dct=use_dct)
        idxs, vals, _, _, qp = compressor.compress(encoded, TOPK)
        gradient[n + "idxs"] = idxs.cpu()
        gradient[n + "vals"] = vals.cpu()
        gradient[n + "quant_params"] = qp
    gradient["metadata"] = {"window": WINDOW, "sample_digest": "00ff" * 8, "sample_count": 12}
    torch.save({"state_dict": gradient, "global_step": step}, path)
    with open(path, "rb") as fh:
        return fh.read()


def templar_dense(model, data: bytes, templar, use_dct) -> dict[str, torch.Tensor]:
    """Templar's reading path: torch.load(weights_only=True), the checks of its receiver
    (restated from Comms.gather and check_compressed_indices), then per parameter
    maybe_dequantize_values -> decompress -> ChunkingTransformer.decode."""
    transformer, compressor = templar
    sd = torch.load(io.BytesIO(data), weights_only=True)["state_dict"]
    out = {}
    for n, p in model.named_parameters():
        shift, scale, _, lookup, _ = sd[n + "quant_params"]
        assert torch.isfinite(shift) and math.isfinite(scale) and 1e-12 <= abs(scale) <= 1e4
        assert torch.isfinite(lookup).all()
        vals = sd[n + "vals"]
        unpacked = tc.unpack_12bit_indices(sd[n + "idxs"], vals.shape)
        enc = transformer.encode(torch.zeros_like(p), use_dct=use_dct)
        totalk = enc.shape[-1] if enc.dim() == 2 else enc.shape[-1] * enc.shape[-2]
        assert unpacked.shape[-1] == min(TOPK, totalk)
        assert unpacked.min() >= 0 and unpacked.max() < totalk
        v = compressor.maybe_dequantize_values([vals], [sd[n + "quant_params"]], "cpu")[0]
        d = compressor.decompress(p, sd[n + "idxs"], v, enc.shape, totalk)
        out[n] = transformer.decode(d, use_dct=use_dct)
    return out


def templar_batch(model, datas: list[bytes], templar) -> dict[str, torch.Tensor]:
    """What Templar's gather + outer step combine: per parameter, `batch_decompress` of
    every peer's (idxs, vals, quant_params) with its defaults (median norm clip, then the
    `scatter_reduce` mean over the peers that kept each entry)."""
    transformer, compressor = templar
    sds = [torch.load(io.BytesIO(d), weights_only=True)["state_dict"] for d in datas]
    out = {}
    for n, p in model.named_parameters():
        enc = transformer.encode(torch.zeros_like(p), use_dct=False)
        totalk = enc.shape[-1] if enc.dim() == 2 else enc.shape[-1] * enc.shape[-2]
        d = compressor.batch_decompress(
            p,
            [sd[n + "idxs"] for sd in sds],
            [sd[n + "vals"] for sd in sds],
            enc.shape,
            totalk,
            [sd[n + "quant_params"] for sd in sds],
        )
        out[n] = transformer.decode(d, use_dct=False)
    return out


async def fold_into(aggregator: Aggregator, held: list) -> dict[str, torch.Tensor]:
    for checked in held:
        await aggregator.add(aggregator.prepare(checked))
    return aggregator.result()


def setup(model, use_dct):
    templar = (
        tc.ChunkingTransformer(model, target_chunk=64),
        tc.TopKCompressor(use_quantization=True, quantization_bins=4, quantization_range=6),
    )
    ours = TopKCompressor(TopKParams(topk=TOPK, use_dct=use_dct, quantization_bins=4))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    expected = Expected(version="2.1.3", codec=ours, shapes=shapes, window=WINDOW)
    return templar, ours, shapes, expected


def largest(a: dict, b: dict) -> float:
    return max(float((a[n].float() - b[n].float()).abs().max()) for n in a)


def run(use_dct: bool, peers: int = 4) -> None:
    torch.manual_seed(1 + use_dct)
    model = model_of()
    templar, ours, shapes, expected = setup(model, use_dct)
    tmp = tempfile.mkdtemp()
    # 1. Templar writes; this library reads and aggregates
    agg = Aggregator(ours, shapes, normalisation=Normalisation.NONE)
    ref = {n: torch.zeros(s) for n, s in shapes.items()}
    worst = 0.0
    held, datas = [], []
    for uid in range(peers):
        grads = {n: torch.randn(s) * (uid + 1) for n, s in shapes.items()}
        path = os.path.join(tmp, f"temp_gradient-{WINDOW}-{uid}-v2.1.3.pt")
        data = templar_payload(model, grads, templar, use_dct, 100 + uid, path)
        theirs = templar_dense(model, data, templar, use_dct)
        got, meta = tpayload.decode_with_metadata(data, expected)
        assert got.meta.global_step == 100 + uid and meta["sample_count"] == 12
        worst = max(worst, largest(ours.decode(got.compressed), theirs))
        for n in shapes:
            ref[n] += theirs[n]
        held.append(got.checked)
        datas.append(data)

    async def fold():
        for checked in held:
            await agg.add(agg.prepare(checked))
        return agg.result()

    result = asyncio.run(fold())
    mean_err = largest(result, {n: t / peers for n, t in ref.items()})
    print(f"use_dct={use_dct}: Templar->ours per peer {worst:.3g}, mean of {peers} {mean_err:.3g}")
    if not use_dct:  # kept_mean refuses DCT: Templar averages in the DCT domain
        kept = Aggregator(ours, shapes, normalisation=Normalisation.KEPT_MEAN)
        mine = asyncio.run(fold_into(kept, held))
        theirs = templar_batch(model, datas, templar)
        print(f"Templar's batch_decompress vs kept_mean of {peers}: {largest(mine, theirs):.3g}")
    # 2. this library writes; Templar reads
    worst = 0.0
    for _ in range(peers):
        comp = ours.encode({n: torch.randn(s) for n, s in shapes.items()})
        data = twriter.encode(comp, ours, window=WINDOW, global_step=5)
        worst = max(worst, largest(ours.decode(comp), templar_dense(model, data, templar, use_dct)))
    print(f"use_dct={use_dct}: ours->Templar per peer {worst:.3g}")


def run_bf16() -> None:
    torch.manual_seed(5)
    model = model_of(torch.bfloat16)
    templar, ours, shapes, expected = setup(model, False)
    grads = {n: torch.randn(s).to(torch.bfloat16) for n, s in shapes.items()}
    path = os.path.join(tempfile.mkdtemp(), f"temp_gradient-{WINDOW}-9-v2.1.3.pt")
    data = templar_payload(model, grads, templar, False, 1, path)
    theirs = templar_dense(model, data, templar, False)
    mine = ours.decode(tpayload.decode(data, expected).compressed)
    rel = max(
        float((mine[n] - theirs[n].float()).abs().max() / theirs[n].float().abs().max())
        for n in shapes
    )
    print(f"bfloat16 model: Templar->ours largest relative difference {rel:.3g}")


def main() -> None:
    global tc
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templar", required=True, help="a checkout of tplr-ai/templar")
    parser.add_argument("--site", help="a folder holding einops, added to sys.path")
    args = parser.parse_args()
    if args.site:
        sys.path.insert(0, args.site)
    tc = load_templar(args.templar)
    run(False)
    run(True)
    run_bf16()


if __name__ == "__main__":
    main()
