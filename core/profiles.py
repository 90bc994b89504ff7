"""Protocol profiles: which network this node speaks to, chosen once in neurons/container.py.

A profile bundles everything that differs between this project's own protocol (`native`,
the default) and a live Templar subnet (`templar`, docs/templar.md): object names, the
peer-list and start-window bodies, and the time window a window's gradients are judged by.
Services take the parts they need from the profile they are given; none asks which it is.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from core import keys, payload_format
from core.peers import peer_list
from core.templar import coordination as templar_coordination
from core.templar import keys as templar_keys
from core.templar import payload_format as templar_payloads
from core.windows import TimeWindow, first_block


@attrs.frozen
class ProtocolProfile:
    name: str
    keys: keys.KeyScheme
    coordination: peer_list.CoordinationCodec
    # How gradients are encoded and read (signed safetensors, or Templar's torch.save).
    payloads: payload_format.PayloadFormat
    # Window w's gradients are judged from the timestamp of the first block of window
    # w + anchor_offset: 0 here (uploads during w), 1 in Templar (uploads once w is over).
    anchor_offset: int = attrs.field(validator=attrs.validators.ge(0))
    # Templar's validators compare the Last-Modified the store reports, as it is; ours count
    # its rounding (core/windows.py, `classify`). Judging as the network judges keeps a
    # node from skipping what every other validator accepts.
    reported_stamps: bool = False
    # Miners publish a JSON debug report a window (core/debug.py). Templar's debug objects
    # are `torch.save` dicts under the same name: a templar-profile node writes none rather
    # than put JSON where Templar's validators expect a pickle.
    debug_reports: bool = True

    def anchor_block(self, window: int, blocks_per_window: int) -> int:
        """The block whose timestamp opens the time window of `window`'s gradients."""
        return first_block(window + self.anchor_offset, blocks_per_window)

    def time_window(self, anchor_timestamp: datetime, delta_seconds: float) -> TimeWindow:
        """[t, t + delta_seconds], t the timestamp of `anchor_block`: both edges inclusive."""
        return TimeWindow.after(anchor_timestamp, delta_seconds)

    def timestamp_resolution(self, store_resolution: float) -> float:
        """How coarse the stamps `classify` is told they are, for a store that rounds them
        down to `store_resolution` seconds."""
        return 0.0 if self.reported_stamps else store_resolution


NATIVE = ProtocolProfile(
    name="native",
    keys=keys.NATIVE,
    coordination=peer_list.NATIVE,
    payloads=payload_format.NATIVE,
    anchor_offset=0,
)
TEMPLAR = ProtocolProfile(
    name="templar",
    keys=templar_keys.TEMPLAR,
    coordination=templar_coordination.TEMPLAR,
    payloads=templar_payloads.TEMPLAR,
    anchor_offset=1,
    reported_stamps=True,
    debug_reports=False,
)
PROFILES: dict[str, ProtocolProfile] = {p.name: p for p in (NATIVE, TEMPLAR)}


def profile(name: str) -> ProtocolProfile:
    """The profile called `name`; ValueError names the choices."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}: one of {', '.join(PROFILES)}") from None
