"""Checkpoints over a real S3 service (SeaweedFS): multipart shards, fallback, janitor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.storage.s3 import S3StoreOpener
from core.checkpoints import load_checkpoint
from core.janitor import RetentionPolicy, sweep
from tests.s3.server import SeaweedServer
from tests.unit.checkpoint_helpers import assert_same, meta, setup, state_of, step, trained

pytestmark = pytest.mark.s3


async def test_checkpoints_on_seaweedfs(seaweedfs: SeaweedServer, tmp_path: Path) -> None:
    name = await asyncio.to_thread(seaweedfs.create_bucket, "ckpt")
    opener = S3StoreOpener()
    store = opener.open(seaweedfs.bucket(name))
    try:
        ck, _, _scratch, cfg, _ = setup(tmp_path, store=store, shard_bytes=2000)
        model, opt, sched, mom = trained()
        first = await ck.save(state_of(model, opt, sched, mom), meta(5))
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        step(model, opt, sched, mom)
        second = await ck.save(state_of(model, opt, sched, mom), meta(6))

        loaded = await load_checkpoint(store, cfg)
        assert loaded.window == 6 and not loaded.fell_back
        assert_same(dict(model.state_dict()), dict(loaded.state.model))

        shard = second.key(second.sections["model"].shards[0])
        data = bytearray((await store.get(shard)).data)
        data[-1] ^= 0xFF
        await store.put(shard, bytes(data))
        loaded = await load_checkpoint(store, cfg)
        assert loaded.window == 5 and "sha256" in loaded.skipped[0].reason
        assert_same(saved, dict(loaded.state.model))

        result = await sweep(store, 100, RetentionPolicy(stale_retention=0, keep_checkpoints=1))
        assert result.kept_checkpoints == ((cfg.version, 6, 1),)
        left = [m.key async for m in store.list("checkpoints/")]
        assert all("/5-1/" not in k for k in left) and first.window == 5
    finally:
        await store.close()
        opener.close()
        await asyncio.to_thread(seaweedfs.delete_bucket, name)
