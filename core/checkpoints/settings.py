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
    # Tensors are grouped into files of about this size, so shards stream in parallel and no
    # single object grows without bound. Measured on 2 cores (docs/benchmarks.md): 16 MiB
    # shards, 6 at a time, keep both cores busy hashing and writing; for multi-GB states over
    # a distant R2, larger shards (64-256 MiB) save per-object round trips.
    shard_bytes: int = attrs.field(default=16 * MiB, validator=gt(0))
    # Shards serialised (and, for `save`, streamed to the store) at once.
    write_concurrency: int = attrs.field(default=6, validator=gt(0))
    # Threads hashing a save's shards ahead of their writes (sha256 is pure CPU: one per
    # core; neurons set the machine's core count).
    hash_workers: int = attrs.field(default=2, validator=gt(0))
    # Scratch files a background save (snapshot, then publish) uploads at once.
    upload_concurrency: int = attrs.field(default=4, validator=gt(0))
    # Shards streamed in and parsed at once by a load.
    download_concurrency: int = attrs.field(default=4, validator=gt(0))
    # Bounds on what a reader accepts, checked before downloading (a checkpoint may come
    # from another validator's bucket).
    max_manifest_bytes: int = attrs.field(default=1 * MiB, validator=gt(0))
    max_tree_bytes: int = attrs.field(default=64 * MiB, validator=gt(0))
    max_header_bytes: int = attrs.field(default=16 * MiB, validator=gt(0))
    max_checkpoint_bytes: int = attrs.field(default=256 * 1024 * MiB, validator=gt(0))
    # How many manifests, newest first, `load_checkpoint` may try in one store.
    max_fallbacks: int = attrs.field(default=8, validator=ge(0))
    # Across validators (`load_latest`, `get_latest`): each bucket's newest this many are
    # tried, bucket after bucket. A hostile validator then wastes only its own few tries and
    # cannot hide a lower-stake validator's good checkpoint behind a pile of broken ones.
    max_per_source: int = attrs.field(default=3, validator=gt(0))
    # A bucket listing more checkpoint objects is skipped whole (an honest one holds a few
    # checkpoints of at most thousands of shards each).
    max_listed_objects: int = attrs.field(default=200_000, validator=gt(0))


def checkpoint_due(global_step: int, checkpoint_frequency: int) -> bool:
    """True when a checkpoint should be saved after `global_step` (never at step 0)."""
    if checkpoint_frequency <= 0:
        raise ValueError("checkpoint_frequency must be > 0")
    return global_step > 0 and global_step % checkpoint_frequency == 0
