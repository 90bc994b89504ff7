"""What a checkpoint holds: the training state in sections, and who saved it when."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

_SECTION = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
KNOWN = ("model", "optimizer", "scheduler", "momentum")


def _other_names(instance: Any, attribute: attrs.Attribute, value: Mapping[str, Any]) -> None:
    for name in value:
        if not _SECTION.match(name) or name in KNOWN:
            raise ValueError(f"bad extra section name {name!r}")


@attrs.frozen
class CheckpointState:
    """State dicts as torch returns them: `model.state_dict()`, `optimizer.state_dict()`,
    `scheduler.state_dict()`, and the momentum / error-feedback buffers ({name: tensor}).

    `others` holds further named sections (any nesting of dicts, lists, tuples, tensors,
    numbers and strings). A section left None is not saved and comes back None.
    """

    model: Mapping[str, Any]
    optimizer: Mapping[str, Any] | None = None
    scheduler: Mapping[str, Any] | None = None
    momentum: Mapping[str, Any] | None = None
    others: Mapping[str, Any] = attrs.field(factory=dict, validator=_other_names)

    def sections(self) -> dict[str, Any]:
        named = {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "momentum": self.momentum,
        }
        out = {k: v for k, v in named.items() if v is not None}
        out.update(self.others)
        return out

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any]) -> CheckpointState:
        known = {k: sections.get(k) for k in KNOWN}
        others = {k: v for k, v in sections.items() if k not in KNOWN}
        return cls(**known, others=others)


@attrs.frozen
class CheckpointMeta:
    """Who saves, at which window and step. `extra` is small JSON the caller wants kept."""

    window: int = attrs.field(validator=attrs.validators.ge(0))
    global_step: int = attrs.field(validator=attrs.validators.ge(0))
    uid: int = attrs.field(validator=attrs.validators.ge(0))
    hotkey: str = ""
    extra: Mapping[str, Any] = attrs.field(factory=dict)
