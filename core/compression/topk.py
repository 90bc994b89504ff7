"""Chunked top-k compression (Templar's ChunkingTransformer + TopKCompressor), batched.

encode: view every parameter as chunks (core.compression.chunking), optionally DCT each
chunk, keep the k largest-magnitude entries of every chunk, quantise their values per
parameter (core.compression.quantize), code the indices (Elias-Fano, core.compression.
elias_fano, or 12-bit fields) and pack the value codes to their bit width
(core.compression.packing). On the CPU without the DCT one compiled pass does the selection
and the index stream (core.compression.select); elsewhere chunks of equal (h, w) from all
parameters go through one `torch.topk`. There is no Python loop over chunks.

Wire tensors (k-entry stream = all parameters in name order, each chunk's k entries):
    idx     uint8 (elias_fano.nbytes(plan),)  within-chunk indices, Elias-Fano coded per
                                          chunk (`index_code` "elias_fano", the default)
            or uint8 (ceil(E * 12 / 8),)  12-bit packed (`index_code` "packed", the
                                          previous version)
    val     uint8 (ceil(E * b / 8),)      value codes, b = bits for quantization_bins
            or float32 (E,)               without quantisation
    shift   float32 (P,)                  per-parameter mean (quantised only)
    lookup  float32 (P, bins)             per-parameter bin centres (quantised only)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

import attrs
import numpy as np
import torch

from core.compression import cpu_fold, dct, elias_fano, packing, select
from core.compression.base import Checked, Compressed, Shape, Spec, TensorSpec
from core.compression.bounds import check_values, peak, table_sums_fine
from core.compression.chunking import INDEX_BITS, Plan, PlanCache
from core.compression.quantize import dequantize, quantize
from core.invalid import InvalidPayload

METHOD = "chunked_topk"
# How indices travel: "elias_fano" (this version) or "packed" (fixed 12-bit fields, the
# previous version, whose spec has no `index_code` key so that it stays what it was).
INDEX_CODES = ("elias_fano", "packed")
_MAX_BUFFERS = 16

# `positions` packs a parameter number above this many bits of offset within it.
POSITION_SHIFT = 40


def _positive(instance, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class TopKParams:
    """Templar's hparams: target_chunk, topk_compression, use_dct, quantization_*.

    quantization_bins = 0 turns quantisation off (float32 values on the wire).
    """

    target_chunk: int = attrs.field(default=64, validator=attrs.validators.in_(range(1, 65)))
    topk: int = attrs.field(default=64, validator=_positive)
    use_dct: bool = False
    quantization_bins: int = attrs.field(default=4, validator=attrs.validators.in_(range(257)))
    quantization_range: float = attrs.field(default=6.0, converter=float, validator=_positive)
    index_code: str = attrs.field(default="elias_fano", validator=attrs.validators.in_(INDEX_CODES))

    @property
    def quantized(self) -> bool:
        return self.quantization_bins > 0

    @property
    def value_bits(self) -> int:
        return packing.bit_width(self.quantization_bins) if self.quantized else 32


class TopKCompressor:
    """The default compressor (DCT optional, top-k per chunk, quantised values).

    It writes indices in `params.index_code` and reads both index codes (decode, validate,
    sums: each payload's spec says which). `transition_until` > 0: the codec also accepts
    payloads in the other index code for windows below it (`transition`).
    """

    def __init__(
        self,
        params: TopKParams | None = None,
        *,
        reuse_buffers: bool = True,
        transition_until: int = 0,
        fused: bool = True,
        _shared: TopKCompressor | None = None,
    ):
        self.params = params or TopKParams()
        self._reuse = reuse_buffers
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._encode_lock = threading.Lock()
        if _shared is None:
            self._plans = PlanCache(self.params.target_chunk, self.params.topk)
        else:  # the other index code of the same compressor: one plan cache
            self._plans = _shared._plans
        self.transition_until = transition_until
        # CPU gradients without the DCT: the compiled selection (`select`); False forces
        # the torch path (the one CUDA takes), for comparison.
        self.fused = fused
        self._other: TopKCompressor | None = None

    def __repr__(self) -> str:
        return f"TopKCompressor({self.params!r})"

    @property
    def spec(self) -> Spec:
        p = self.params
        spec: dict[str, str | int | float | bool] = {
            "method": METHOD,
            "target_chunk": p.target_chunk,
            "topk": p.topk,
            "use_dct": p.use_dct,
            "quantization_bins": p.quantization_bins,
            "quantization_range": p.quantization_range,
            "index_bits": INDEX_BITS,
            "value_bits": p.value_bits,
        }
        if p.index_code != "packed":
            spec["index_code"] = p.index_code
        return spec

    def transition(self) -> tuple[TopKCompressor, int] | None:
        """The other index code's compressor and the first window whose payloads in it are
        no longer accepted; None when no transition is configured."""
        if self.transition_until <= 0:
            return None
        if self._other is None:
            other = next(c for c in INDEX_CODES if c != self.params.index_code)
            self._other = TopKCompressor(
                attrs.evolve(self.params, index_code=other),
                reuse_buffers=self._reuse,
                _shared=self,
            )
        return self._other, self.transition_until

    def _code_of(self, compressed: Compressed) -> str:
        """The index code a payload's tensors are in (its spec says; ours when absent)."""
        return str(compressed.spec.get("index_code", "packed"))

    def _params_of(self, compressed: Compressed) -> TopKParams:
        code = self._code_of(compressed)
        if code == self.params.index_code:
            return self.params
        return attrs.evolve(self.params, index_code=code)

    # -- sizes -------------------------------------------------------------------------

    def layout(self, shapes: Mapping[str, Shape]) -> dict[str, TensorSpec]:
        plan = self._plans.get(list(shapes.items()))
        e = plan.total_entries
        p = self.params
        if p.index_code == "packed":
            idx_bytes = packing.packed_nbytes(e, INDEX_BITS)
        else:
            idx_bytes = elias_fano.nbytes(plan)
        out = {"idx": TensorSpec(torch.uint8, (idx_bytes,))}
        if p.quantized:
            out["val"] = TensorSpec(torch.uint8, (packing.packed_nbytes(e, p.value_bits),))
            out["shift"] = TensorSpec(torch.float32, (len(plan.params),))
            out["lookup"] = TensorSpec(torch.float32, (len(plan.params), p.quantization_bins))
        else:
            out["val"] = TensorSpec(torch.float32, (e,))
        return out

    def estimate_bytes(self, shapes: Mapping[str, Shape]) -> int:
        return sum(
            torch.empty(0, dtype=s.dtype).element_size() * _numel(s.shape)
            for s in self.layout(shapes).values()
        )

    # -- encode ------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, grads: Mapping[str, torch.Tensor]) -> Compressed:
        shapes = [(name, tuple(t.shape)) for name, t in grads.items()]
        plan = self._plans.get(shapes)
        if not plan.params:
            raise ValueError("nothing to compress")
        device = next(iter(grads.values())).device
        names = [p.name for p in plan.params]
        p = self.params
        if self.fused and select.selectable(grads, p.use_dct):
            arrays = {n: _flat32(t) for n, t in grads.items()}
            with self._encode_lock:  # one selection at a time uses both threads
                local, values, stream = select.select(plan, arrays, p.index_code != "packed")
            vals = torch.from_numpy(values)
            if p.quantized and 8 % p.value_bits == 0:
                tensors = self._quantize_compiled(plan, values)
                tensors["idx"] = (
                    torch.from_numpy(stream)
                    if stream is not None
                    else packing.pack(torch.from_numpy(local), INDEX_BITS)
                )
                return Compressed(
                    spec=self.spec,
                    shapes=[(n, plan.params[i].shape) for i, n in enumerate(names)],
                    tensors={k: tensors[k] for k in ("idx", "val", "shift", "lookup")},
                )
            if stream is None:
                tensors = {"idx": packing.pack(torch.from_numpy(local), INDEX_BITS)}
            else:
                tensors = {"idx": torch.from_numpy(stream)}
        else:
            idx_parts: dict[str, torch.Tensor] = {}
            val_parts: dict[str, torch.Tensor] = {}
            with self._encode_lock:
                for (h, w), members in plan.groups.items():
                    self._encode_group(plan, h, w, members, grads, device, idx_parts, val_parts)
            idx = torch.cat([idx_parts[n] for n in names])
            vals = torch.cat([val_parts[n] for n in names])
            tensors = {"idx": self._pack_indices(plan, idx)}
        if p.quantized:
            q = quantize(
                vals,
                plan.param_ids(device),
                len(plan.params),
                p.quantization_bins,
                p.quantization_range,
            )
            tensors["val"] = packing.pack(q.codes, p.value_bits)
            tensors["shift"] = q.shift
            tensors["lookup"] = q.lookup
        else:
            tensors["val"] = vals
        return Compressed(
            spec=self.spec,
            shapes=[(n, plan.params[i].shape) for i, n in enumerate(names)],
            tensors=tensors,
        )

    def _quantize_compiled(self, plan: Plan, values: np.ndarray) -> dict[str, torch.Tensor]:
        p = self.params
        starts = np.array([m.offset for m in plan.params] + [plan.total_entries], np.int64)
        packed = np.empty(packing.packed_nbytes(plan.total_entries, p.value_bits), np.uint8)
        shift = np.empty(len(plan.params), np.float32)
        lookup = np.empty((len(plan.params), p.quantization_bins), np.float32)
        select.quantize_packed(
            values, starts, p.quantization_bins, p.quantization_range, p.value_bits,
            packed, shift, lookup,
        )  # fmt: skip
        return {
            "val": torch.from_numpy(packed),
            "shift": torch.from_numpy(shift),
            "lookup": torch.from_numpy(lookup),
        }

    def _pack_indices(self, plan: Plan, local: torch.Tensor) -> torch.Tensor:
        """The wire form of rising within-chunk indices (one per entry, any device)."""
        if self.params.index_code == "packed":
            return packing.pack(local, INDEX_BITS)
        # The bit coder is a compiled CPU loop; the indices are 2 bytes an entry to move.
        host = local.to("cpu", torch.int64).numpy()
        out = np.empty(elias_fano.nbytes(plan), np.uint8)
        elias_fano.encode(host, elias_fano.geometry(plan), out)
        return torch.from_numpy(out).to(local.device)

    def local_indices(
        self, compressed: Compressed, device=None, *, on_loop: bool = False
    ) -> torch.Tensor:
        """Every entry's within-chunk index (int64, one per entry), from either index code;
        `on_loop` as `validate`.

        Raises `InvalidPayload` for an Elias-Fano stream that does not decode."""
        plan = self._plans.get(compressed.shapes)
        code = self._code_of(compressed)
        return self._local(plan, compressed.tensors["idx"], code, device, on_loop=on_loop)

    def _local(
        self, plan: Plan, t: torch.Tensor, code: str, device=None, *, on_loop: bool = False
    ) -> torch.Tensor:
        device = torch.device(device) if device is not None else t.device
        if code == "packed":
            return packing.unpack(t.to(device), plan.total_entries, INDEX_BITS)
        stream = t.to("cpu")
        if stream.dtype != torch.uint8 or stream.dim() != 1:
            raise InvalidPayload("malformed", "idx is not a uint8 stream")
        if stream.numel() != elias_fano.nbytes(plan):
            raise InvalidPayload("malformed", "idx is not the size of its plan's stream")
        out = np.empty(plan.total_entries, np.uint16)
        checks = elias_fano.HOLDING if on_loop else elias_fano.RELEASING
        status, entry = checks.decode_indices(
            cpu_fold._array(stream), elias_fano.geometry(plan), out
        )
        cpu_fold.raise_for(plan, status, entry, stream=True)
        return torch.from_numpy(out.astype(np.int64)).to(device)

    def _encode_group(self, plan: Plan, h, w, members, grads, device, idx_parts, val_parts):
        total = sum(m.n_chunks for m in members)
        use_dct = self.params.use_dct
        buf = self._buffer(("enc", h, w, total, device), (total, h, w), device)
        start = 0
        for m in members:
            src = grads[m.name].detach().reshape(-1)
            dst = buf[start : start + m.n_chunks].view(*m.grid, h, w)
            if use_dct:
                dst.copy_(m.chunked_view(src))
            elif src.dtype == buf.dtype:
                # magnitude and chunk layout in one pass; values are read from the source later
                torch.abs(m.chunked_view(src), out=dst)
            else:
                dst.copy_(m.chunked_view(src)).abs_()
            start += m.n_chunks
        if use_dct:
            coeffs = dct.forward(buf).reshape(total, h * w)
            score = coeffs.abs()
        else:
            coeffs = None
            score = buf.view(total, h * w)
        k = members[0].k
        local = torch.topk(score, k, dim=1, largest=True, sorted=False).indices
        # In increasing order within each chunk: the format allows any order, but a
        # receiver checks increasing indices for repeats with one compare each, far cheaper
        # than the sort costs the sender (docs/gather.md).
        local = local.sort(dim=1).values
        start = 0
        for m in members:
            rows = local[start : start + m.n_chunks]
            if coeffs is None:
                flat = plan.flat_index(m, rows)
                vals = grads[m.name].detach().reshape(-1)[flat.reshape(-1)]
            else:
                vals = torch.gather(coeffs[start : start + m.n_chunks], 1, rows).reshape(-1)
            idx_parts[m.name] = rows.reshape(-1)
            val_parts[m.name] = vals.to(torch.float32)
            start += m.n_chunks

    def _buffer(self, key, shape, device) -> torch.Tensor:
        if not self._reuse:
            return torch.empty(shape, dtype=torch.float32, device=device)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= _MAX_BUFFERS:  # a new model: drop the old workspaces
                self._buffers.clear()
            buf = self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=device)
        return buf

    # -- decode ------------------------------------------------------------------------

    @torch.no_grad()
    def decode(
        self,
        compressed: Compressed,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        plan = self._plans.get(compressed.shapes)
        t = compressed.tensors
        device = torch.device(device) if device is not None else t["idx"].device
        local = self.local_indices(compressed, device)
        vals = self._values(plan, t, device)
        out: dict[str, torch.Tensor] = {}
        if self.params.use_dct:
            for (h, w), members in plan.groups.items():
                self._decode_group_dct(plan, h, w, members, local, vals, dtype, out)
        else:
            for m in plan.params:
                dense = torch.zeros(m.numel, dtype=dtype, device=device)
                sl = slice(m.offset, m.offset + m.n_entries)
                flat = plan.flat_index(m, local[sl].view(m.n_chunks, m.k)).reshape(-1)
                dense[flat] = vals[sl].to(dtype)
                out[m.name] = dense.view(m.shape)
        return {m.name: out[m.name] for m in plan.params}

    def plan(self, shapes: Mapping[str, Shape]) -> Plan:
        """The chunk plan of these parameter shapes (what the running sums are laid out by)."""
        return self._plans.get(sorted(shapes.items()))

    @torch.no_grad()
    def positions(self, compressed: Compressed, *, on_loop: bool = False) -> torch.Tensor:
        """Every kept entry as one int64: parameter number << POSITION_SHIFT | offset in the
        parameter (the chunk-domain offset under DCT). Two payloads keeping the same entries
        have the same positions, whatever their values. `on_loop` as `validate`."""
        plan = self._plans.get(compressed.shapes)
        local = self.local_indices(compressed, on_loop=on_loop)
        parts = []
        for number, m in enumerate(plan.params):
            sl = slice(m.offset, m.offset + m.n_entries)
            flat = plan.flat_index(m, local[sl].view(m.n_chunks, m.k)).reshape(-1)
            parts.append(flat + (number << POSITION_SHIFT))
        return torch.cat(parts)

    def _values(self, plan: Plan, t, device) -> torch.Tensor:
        e = plan.total_entries
        p = self.params
        if p.quantized:
            codes = packing.unpack(t["val"].to(device), e, p.value_bits)
            vals = dequantize(
                codes, plan.param_ids(device), t["shift"].to(device), t["lookup"].to(device)
            )
        else:
            vals = t["val"].to(device)
        return vals

    def _decode_group_dct(self, plan, h, w, members, local, vals, dtype, out):
        total = sum(m.n_chunks for m in members)
        device = local.device
        coeffs = torch.zeros((total, h * w), dtype=torch.float32, device=device)
        start = 0
        for m in members:
            sl = slice(m.offset, m.offset + m.n_entries)
            rows = coeffs[start : start + m.n_chunks]
            rows.scatter_(1, local[sl].view(m.n_chunks, m.k), vals[sl].view(m.n_chunks, m.k))
            start += m.n_chunks
        chunks = dct.inverse(coeffs.view(total, h, w))
        start = 0
        for m in members:
            dense = torch.empty(m.numel, dtype=dtype, device=device)
            m.chunked_view(dense).copy_(chunks[start : start + m.n_chunks].view(*m.grid, h, w))
            out[m.name] = dense.view(m.shape)
            start += m.n_chunks

    # -- checks ------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, compressed: Compressed, *, on_loop: bool = False) -> Checked:
        """The checks `Compressor.validate` lists; on the CPU one compiled pass, whose
        findings (`cpu_fold.Scan`: counts for the norms, entries for the fold) the returned
        `Checked` carries to the running sum."""
        plan = self._plans.get(compressed.shapes)
        t = compressed.tensors
        p = self._params_of(compressed)
        found = None
        if t["idx"].device.type == "cpu" and cpu_fold.supported(p):
            found = cpu_fold.scan(plan, p, t, on_loop=on_loop)
        else:
            self._validate_entries(plan, t, self._code_of(compressed), on_loop=on_loop)
        if not p.quantized:
            check_values("val", t["val"])
            return Checked(compressed, found)
        if found is not None and table_sums_fine(t["shift"], t["lookup"]):
            return Checked(compressed, found)
        for name in ("shift", "lookup"):
            if not math.isfinite(peak(t[name])):
                raise InvalidPayload("non_finite", f"{name} holds NaN or inf")
        # Each is finite, but a value decodes to their sum, and that is what is added.
        check_values("shift + lookup", t["lookup"].double() + t["shift"].double()[:, None])
        return Checked(compressed, found)

    def _validate_entries(
        self, plan: Plan, t, code: str | None = None, *, on_loop: bool = False
    ) -> None:
        e = plan.total_entries
        if (code or self.params.index_code) != "packed":
            # The decoder checks the stream: rising indices inside their chunks.
            self._local(plan, t["idx"], "elias_fano", on_loop=on_loop)
            self._check_codes(plan, t)
            return
        local = packing.unpack(t["idx"], e, INDEX_BITS)
        beyond = local >= plan.chunk_sizes(local.device)
        if bool(beyond.any()):
            first = int(beyond.nonzero()[0, 0])
            name = next(m.name for m in reversed(plan.params) if m.offset <= first)
            raise InvalidPayload(
                "index_out_of_range", f"{name}: index {int(local[first])} beyond its chunk"
            )
        for offset, n_rows, k in plan.runs:
            if k > 1 and _has_repeats(local[offset : offset + n_rows * k].view(n_rows, k)):
                raise InvalidPayload("duplicate_index", "an index repeats within a chunk")
        self._check_codes(plan, t)

    def _check_codes(self, plan: Plan, t) -> None:
        p = self.params
        if p.quantized and p.quantization_bins != 1 << p.value_bits:
            codes = packing.unpack(t["val"], plan.total_entries, p.value_bits)
            if int(codes.max()) >= p.quantization_bins:
                raise InvalidPayload("bad_value_code", "value code beyond quantization_bins")


def _has_repeats(rows: torch.Tensor) -> bool:
    """Whether any row holds a value twice (indices are below 4096, so int16 holds them)."""
    if rows.device.type == "cpu":
        # numpy's vectorised small-row sort is much faster than torch's here
        # (docs/gather.md), and this check runs for every peer.
        ordered = np.sort(rows.to(torch.int16).numpy(), axis=1)
        return bool((ordered[:, 1:] == ordered[:, :-1]).any())
    ordered = rows.sort(dim=1).values
    return bool((ordered[:, 1:] == ordered[:, :-1]).any())


def _flat32(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a flat float32 array (a view when it already is one)."""
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous().reshape(-1).numpy()


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
