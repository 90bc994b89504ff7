"""Saving: files first, then the manifest, then the latest pointer.

Order is the crash-safety argument (docs/checkpoints.md): until the manifest is written the
new checkpoint does not exist for any reader, so a crash or failed upload at any point leaves
the previous checkpoint the newest complete one. Re-saving a window that already has a
manifest deletes that manifest first, so its files are never replaced under a reader's feet.

Two ways to get the tensors out:
- `Checkpointer.save` streams each shard straight from the tensors' memory into the store
  (`put_stream`), hashing on the way: one pass over the bytes, no scratch file, no copy. The
  tensors must not change until it returns.
- `Checkpointer.snapshot` first serialises every shard into a scratch file (a worker thread,
  one tensor at a time, no second copy in RAM); once it returns the caller may change the
  model again, and `Upload.publish` sends the files, the manifest and the pointer.
  `BackgroundSaver` runs that second phase as a task so the training loop only waits for the
  snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core import keys
from core.checkpoints.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    Section,
    parse_pointer,
    pointer_json,
    pointer_key,
)
from core.checkpoints.settings import CheckpointSettings
from core.checkpoints.shards import ShardStream, Written, plan_shards, write_shard
from core.checkpoints.state import CheckpointMeta, CheckpointState
from core.checkpoints.tree import split
from ports import Clock, NotFound, ObjectStore, StorageError
from ports.scratch import Scratch

log = logging.getLogger(__name__)

_hashers: dict[int, ThreadPoolExecutor] = {}
_hashers_lock = threading.Lock()


def _hash_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of `workers` threads for the shards' sha256, shared by every
    save (a pool per checkpointer would leave its idle threads behind)."""
    with _hashers_lock:
        pool = _hashers.get(workers)
        if pool is None:
            pool = _hashers[workers] = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="checkpoint-hash"
            )
        return pool


__all__ = ["BackgroundSaver", "Checkpointer", "Upload"]


async def _all(coros: list[Awaitable[None]]) -> None:
    """Run `coros` (or tasks) to the end, every one of them, then raise the first error: a
    shard still being read when save() returns would race the caller's next optimizer step,
    and a manifest must not be written while an upload may still fail."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    except BaseException:  # cancelled: let the others finish or stop before going on
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for result in results:
        if isinstance(result, BaseException):
            raise result


class Upload:
    """The second phase of one save: uploads in flight, then manifest and pointer."""

    def __init__(self, saver: Checkpointer, meta: CheckpointMeta) -> None:
        self._saver = saver
        self._meta = meta
        self._gate = asyncio.Semaphore(saver.settings.upload_concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._paths: list[str] = []
        self.files: list[FileEntry] = []
        self.sections: dict[str, Section] = {}

    def key(self, name: str) -> str:
        s = self._saver
        return keys.checkpoint_file(self._meta.window, self._meta.uid, s.settings.version, name)

    def record(self, name: str, written: Written) -> None:
        """A file already stored (streamed) under `key(name)`."""
        self.files.append(FileEntry(name, written.size, written.sha256))

    def add_file(self, name: str, path: str, written: Written) -> None:
        self._paths.append(path)
        self.record(name, written)
        self._tasks.append(asyncio.create_task(self._send(self._saver.store.put_file, name, path)))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.files.append(FileEntry(name, len(data), hashlib.sha256(data).hexdigest()))
        self._tasks.append(asyncio.create_task(self._send(self._saver.store.put, name, data)))

    async def _send(self, put: Callable, name: str, body: object) -> None:
        async with self._gate:
            await put(self.key(name), body)

    def _cleanup(self) -> None:
        for path in self._paths:
            self._saver.scratch.remove(path)
        self._paths.clear()

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._cleanup()

    async def publish(self) -> Manifest:
        """Wait for the files, then write the manifest and advance the pointer.

        Raises the first upload error; no manifest is written then, so the checkpoint stays
        invisible and the previous one remains the newest complete checkpoint.
        """
        s, meta = self._saver, self._meta
        try:
            await _all(self._tasks)
        finally:
            self._cleanup()
        manifest = Manifest(
            version=s.settings.version,
            window=meta.window,
            uid=meta.uid,
            global_step=meta.global_step,
            hotkey=meta.hotkey,
            created_at=s.clock.now(),
            sections=self.sections,
            files=self.files,
            extra=meta.extra,
        )
        body = manifest.to_json()
        await s.store.put(keys.checkpoint_manifest(meta.window, meta.uid, s.settings.version), body)
        await s.advance_pointer(manifest, hashlib.sha256(body).hexdigest())
        log.info(
            "checkpoint saved: window %d, step %d, %d files, %d bytes",
            meta.window,
            meta.global_step,
            len(self.files),
            manifest.total_bytes,
        )
        return manifest


class Checkpointer:
    """Saves checkpoints of one neuron into one store (its own bucket, or a local store)."""

    def __init__(
        self, store: ObjectStore, scratch: Scratch, clock: Clock, settings: CheckpointSettings
    ) -> None:
        self.store = store
        self.scratch = scratch
        self.clock = clock
        self.settings = settings
        self._writers = asyncio.Semaphore(settings.write_concurrency)

    async def save(self, state: CheckpointState, meta: CheckpointMeta) -> Manifest:
        """Stream every shard into the store, then publish; returns once the checkpoint is
        complete in the store. The tensors in `state` must not change until this returns."""
        upload = await self._begin(meta)
        await self._serialise(state, upload, self._stream)
        return await upload.publish()

    async def snapshot(self, state: CheckpointState, meta: CheckpointMeta) -> Upload:
        """Phase one of a background save: every shard serialised to a scratch file, uploads
        started.

        The tensors in `state` must not change until this returns; afterwards they may. Call
        `publish()` on the result to finish.
        """
        upload = await self._begin(meta)
        await self._serialise(state, upload, self._write_and_send)
        return upload

    async def _begin(self, meta: CheckpointMeta) -> Upload:
        json.dumps(dict(meta.extra), allow_nan=False)  # refuse unstorable metadata up front
        manifest_key = keys.checkpoint_manifest(meta.window, meta.uid, self.settings.version)
        if await self.store.head(manifest_key) is not None:
            await self.store.delete([manifest_key])
        return Upload(self, meta)

    async def _serialise(
        self,
        state: CheckpointState,
        upload: Upload,
        send: Callable[[Upload, str, dict, str], Coroutine[Any, Any, None]],
    ) -> None:
        """Every section's tree and shards handed to `send`; on failure nothing is left
        running and the upload is aborted."""
        jobs = []
        try:
            for section, value in state.sections().items():
                tree, tensors = split(value, section)
                plan = plan_shards(tensors, self.settings.shard_bytes)
                shards = [f"{section}-{i:05d}.safetensors" for i in range(len(plan))]
                jobs += [
                    (name, {n: tensors[n] for n in names}, section)
                    for name, names in zip(shards, plan, strict=True)
                ]
                tree_name = f"{section}.json"
                upload.add_bytes(tree_name, json.dumps(tree, separators=(",", ":")).encode())
                upload.sections[section] = Section(tree_name, shards)
            # Shards of every section go in parallel (hashing and writing release the GIL),
            # bounded by write_concurrency, largest first so the small ones fill the gaps at
            # the end instead of leaving one worker busy while the others idle.
            jobs.sort(key=lambda job: -sum(t.numel() * t.element_size() for t in job[1].values()))
            await _all([send(upload, *job) for job in jobs])
        except BaseException:
            await upload.abort()
            raise

    def _shard_meta(self, section: str) -> dict[str, str]:
        return {"schema": "templar-comms.checkpoint-shard", "section": section}

    async def _stream(self, upload: Upload, name: str, part: dict, section: str) -> None:
        # The hash starts now, in size order on the shared pool, not when this shard's turn
        # to be written comes: hashing (1.8 GB/s a core) then runs ahead on every core
        # instead of waiting behind the writes.
        hasher = _hash_pool(self.settings.hash_workers)
        stream = ShardStream(part, self._shard_meta(section), hasher=hasher)
        try:
            async with self._writers:
                await self.store.put_stream(upload.key(name), stream)
            upload.record(name, await stream.finished())
        except BaseException:
            stream.cancel()  # a hash still queued need not run for a save that failed
            raise

    async def _write_and_send(self, upload: Upload, name: str, part: dict, section: str) -> None:
        async with self._writers:
            path = self.scratch.create(name)
            try:
                written = await asyncio.to_thread(self._write, path, part, section)
            except BaseException:
                self.scratch.remove(path)
                raise
        upload.add_file(name, path, written)

    def _write(self, path: str, tensors: dict, section: str) -> Written:
        with self.scratch.open_write(path) as fh:
            return write_shard(fh, tensors, self._shard_meta(section))

    async def advance_pointer(self, manifest: Manifest, manifest_sha256: str) -> None:
        """Point `latest.json` at `manifest` unless it already names a newer window."""
        key = pointer_key(manifest.version)
        with contextlib.suppress(NotFound):
            try:
                current, _ = parse_pointer((await self.store.get(key, max_bytes=4096)).data)
            except (ManifestError, StorageError):
                current = -1
            if current > manifest.window:
                return
        await self.store.put(key, pointer_json(manifest, manifest_sha256))


class BackgroundSaver:
    """Saves without holding up the training loop: `await start(...)` returns after the
    snapshot; the upload continues as a task. One save at a time: `start` while the previous
    upload still runs skips this checkpoint (returns False) rather than stall training."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self._checkpointer = checkpointer
        self._task: asyncio.Task[Manifest] | None = None
        self.last: Manifest | None = None
        self.last_error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, state: CheckpointState, meta: CheckpointMeta) -> bool:
        if self.busy:
            log.warning("checkpoint for window %d skipped: the previous upload runs", meta.window)
            return False
        await self._collect()
        upload = await self._checkpointer.snapshot(state, meta)
        self._task = asyncio.create_task(upload.publish())
        return True

    async def _collect(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        try:
            self.last = await task
            self.last_error = None
        except Exception as exc:  # reported, not raised: the training loop goes on
            self.last_error = exc
            log.error("checkpoint upload failed: %s", exc)

    async def wait(self) -> Manifest | None:
        """Wait for the upload in flight; the last saved manifest (None if it failed)."""
        await self._collect()
        return None if self.last_error else self.last
