"""Checkpoint parameters (Templar's hparams names where they exist) and the frequency rule."""

from __future__ import annotations

import attrs
from attrs.validators import ge, gt

from core import keys

MiB = 1 << 20


@attrs.frozen(kw_only=True)
class CheckpointSettings:
    version: str = attrs.field(validator=lambda i, a, v: keys.check_version(v))
    # Save every this many global steps (Templar's `checkpoint_frequency`).
    checkpoint_frequency: int = attrs.field(default=100, validator=gt(0))
    # Tensors are grouped into files of about this size: uploads and downloads of one file
    # overlap the serialisation of the next, and no single object grows without bound.
    shard_bytes: int = attrs.field(default=64 * MiB, validator=gt(0))
    write_concurrency: int = attrs.field(default=2, validator=gt(0))
    upload_concurrency: int = attrs.field(default=4, validator=gt(0))
    download_concurrency: int = attrs.field(default=2, validator=gt(0))
    # Bounds on what a reader accepts, checked before downloading (a checkpoint may come
    # from another validator's bucket).
    max_manifest_bytes: int = attrs.field(default=1 * MiB, validator=gt(0))
    max_tree_bytes: int = attrs.field(default=64 * MiB, validator=gt(0))
    max_header_bytes: int = attrs.field(default=16 * MiB, validator=gt(0))
    max_checkpoint_bytes: int = attrs.field(default=256 * 1024 * MiB, validator=gt(0))
    # How many manifests, newest first, a load may try before giving up.
    max_fallbacks: int = attrs.field(default=8, validator=ge(0))


def checkpoint_due(global_step: int, checkpoint_frequency: int) -> bool:
    """True when a checkpoint should be saved after `global_step` (never at step 0)."""
    if checkpoint_frequency <= 0:
        raise ValueError("checkpoint_frequency must be > 0")
    return global_step > 0 and global_step % checkpoint_frequency == 0
