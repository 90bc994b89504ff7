"""The compressor interface and the value a compressor produces.

A compressor turns a model's gradients (name -> tensor) into a handful of named wire tensors
(`Compressed.tensors`) and back. Everything the codec needs to check a peer's payload without
knowing the method comes from the compressor itself: `spec` (compared for equality with the
peer's header), `layout` (exact dtype and shape of every wire tensor for given parameter
shapes) and `validate` (content checks such as index ranges). A new method is one class with
these six members; the codec and gather do not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs
import torch

Shape = tuple[int, ...]
Spec = Mapping[str, str | int | float | bool]


class Shapes(tuple):
    """Parameter names and shapes already in canonical form ((str, (int, ...)), ...): a
    receiver builds a `Compressed` for every peer's payload from the same one, and passing
    it skips converting it again."""


def _shapes(value: Mapping[str, Shape] | tuple) -> Shapes:
    if isinstance(value, Shapes):
        return value
    items = value.items() if isinstance(value, Mapping) else value
    return Shapes((str(name), tuple(int(d) for d in shape)) for name, shape in items)


@attrs.frozen
class TensorSpec:
    """What one wire tensor must look like."""

    dtype: torch.dtype
    shape: Shape


@attrs.frozen(eq=False)
class Compressed:
    """A compressed gradient: parameter names and shapes in wire order, plus wire tensors.

    `tensors` live on the device that produced them; the codec moves them to the CPU.
    """

    spec: Spec = attrs.field(converter=lambda s: dict(s))
    shapes: tuple[tuple[str, Shape], ...] = attrs.field(converter=_shapes)
    tensors: Mapping[str, torch.Tensor] = attrs.field(repr=lambda t: f"<{len(t)} tensors>")

    def shape_map(self) -> dict[str, Shape]:
        return dict(self.shapes)

    def nbytes(self) -> int:
        """Bytes of tensor data (the payload file adds its header to this)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@attrs.frozen(eq=False)
class Checked:
    """A payload whose content checks passed, with what the checks found on the way (the
    compiled scan of a top-k payload; None when the checks keep nothing). The caller hands
    it on to the running sum, which then does not check or scan the payload again."""

    compressed: Compressed
    found: object = attrs.field(default=None, repr=False)


@runtime_checkable
class Compressor(Protocol):
    @property
    def spec(self) -> Spec:
        """Method name and parameters, JSON-able; peers must have an equal spec."""
        ...

    def encode(self, grads: Mapping[str, torch.Tensor]) -> Compressed:
        """Compress every tensor of `grads` (any device, float dtype) in one batched pass."""
        ...

    def decode(
        self,
        compressed: Compressed,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """Dense tensors of the original shapes on `device` (default: the tensors' device)."""
        ...

    def estimate_bytes(self, shapes: Mapping[str, Shape]) -> int:
        """Bytes of tensor data `encode` produces for parameters of these shapes (exact)."""
        ...

    def layout(self, shapes: Mapping[str, Shape]) -> dict[str, TensorSpec]:
        """The exact wire tensors (name -> dtype, shape) for parameters of these shapes."""
        ...

    def validate(self, compressed: Compressed, *, on_loop: bool = False) -> Checked:
        """Content checks on tensors already known to match `layout`; returns the payload as
        `Checked`. `on_loop`: the caller is an event loop's thread (compiled checks then keep
        the GIL, see core.compression.kernels).

        Raises `core.invalid.InvalidPayload` (index_out_of_range, duplicate_index,
        bad_value_code, non_finite) for anything `decode` must not see.
        """
        ...
