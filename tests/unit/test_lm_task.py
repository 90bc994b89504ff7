"""The lm task: generated corpus pages read from the dataset bucket, batches any process
can rebuild from (window, uid), held-out pages for validators, and missing pages skipped."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.storage.chaos import ChaosOpener, Fault
from adapters.storage.memory import MemoryStoreOpener
from neurons.buckets import local_dataset_bucket
from neurons.config import hparams_from_mapping
from neurons.task import ReadOnlyStore, TaskContext, load_task
from neurons.tasks import corpus, pages
from neurons.tasks.lm import HELD_OUT, LMTask
from neurons.training import NoBatches, window_gradient
from ports import TransientStorageError

HP = hparams_from_mapping({"task": "lm", "batch_size": 4, "seed": 11})


async def dataset(opener=None) -> tuple[MemoryStoreOpener, ReadOnlyStore]:
    memory = MemoryStoreOpener(FakeClock())
    await corpus.upload_corpus(memory.open(local_dataset_bucket("write")))
    return memory, ReadOnlyStore(opener or memory, local_dataset_bucket())


async def lm(opener=None) -> LMTask:
    memory, store = await dataset()
    if opener is not None:
        store = ReadOnlyStore(opener(memory), local_dataset_bucket())
    task = load_task(TaskContext(hparams=HP, dataset=store)).task
    assert isinstance(task, LMTask)
    return task


def digest(batches) -> str:
    h = hashlib.sha256()
    for b in batches:
        h.update(b.numpy().tobytes())
    return h.hexdigest()


def test_the_corpus_is_the_same_ascii_bytes_every_time():
    text = corpus.corpus()
    assert text == corpus.corpus()
    assert len(text) == corpus.PAGES * corpus.PAGE_BYTES
    assert text.isascii() and b"The " in text
    assert corpus.pages()[3] == text[3 * corpus.PAGE_BYTES : 4 * corpus.PAGE_BYTES]


async def test_batches_depend_on_window_and_uid_only():
    one, two = await lm(), await lm()  # two instances, two stores: nothing shared
    same = digest(await one.train_batches(3, 7, 2))
    assert same == digest(await two.train_batches(3, 7, 2))
    assert same != digest(await one.train_batches(4, 7, 2))
    assert same != digest(await one.train_batches(3, 8, 2))
    assert digest(await one.eval_batches(7, 2)) == digest(await two.eval_batches(7, 2))
    batch = (await one.train_batches(3, 7, 1))[0]
    assert batch.shape == (HP.batch_size, one.shape.context + 1)
    assert batch.dtype == torch.long


PROBE = """
import asyncio, hashlib, sys
sys.path.insert(0, {root!r})
from tests.unit.test_lm_task import digest, lm
async def main():
    task = await lm()
    model = task.model()
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.numpy().tobytes())
    print(digest(await task.train_batches(3, 7, 2)), h.hexdigest())
asyncio.run(main())
"""


def test_another_process_builds_the_same_batches_and_initial_model():
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=os.getcwd())],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()

    async def here() -> list[str]:
        task = await lm()
        h = hashlib.sha256()
        for t in task.model().state_dict().values():
            h.update(t.numpy().tobytes())
        return [digest(await task.train_batches(3, 7, 2)), h.hexdigest()]

    assert out == asyncio.run(here())


@given(
    seed=st.integers(0, 2**32 - 1),
    window=st.integers(0, 10**7),
    uid=st.integers(0, 4095),
    count=st.integers(1, 8),
)
def test_miners_train_on_distinct_pages_and_never_on_held_out_ones(seed, window, uid, count):
    chosen = pages.train_pages(seed, window, uid, count, corpus.PAGES, HELD_OUT)
    assert len(chosen) == len(set(chosen)) == count
    assert all(0 <= p < corpus.PAGES - HELD_OUT for p in chosen)
    assert chosen == pages.train_pages(seed, window, uid, count, corpus.PAGES, HELD_OUT)
    held = pages.eval_pages(seed, window, count, corpus.PAGES, HELD_OUT)
    assert all(corpus.PAGES - HELD_OUT <= p < corpus.PAGES for p in held)


def test_miners_of_a_window_get_different_pages():
    firsts = {tuple(pages.train_pages(1, 5, uid, 2, corpus.PAGES, HELD_OUT)) for uid in range(20)}
    assert len(firsts) > 15


async def test_a_missing_page_is_a_skipped_batch_with_a_warning(caplog):
    task = await lm()
    chosen = pages.train_pages(HP.seed, 7, 3, 3, corpus.PAGES, HELD_OUT)
    memory = task.dataset._opener
    await memory.open(local_dataset_bucket("write")).delete([corpus.page_key(chosen[1])])
    with caplog.at_level(logging.WARNING, logger="neurons.task"):
        batches = await task.train_batches(3, 7, 3)
    assert len(batches) == 2
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and corpus.page_key(chosen[1]) in warned[0].getMessage()
    assert "skipped" in warned[0].getMessage()


@pytest.mark.parametrize(
    "fault",
    [
        Fault(error_rate=1.0, error=TransientStorageError),
        Fault(error_rate=1.0, error=lambda m: __import__("ports").AccessDenied(m)),
    ],
)
async def test_an_unreadable_page_is_skipped_not_raised(fault, caplog):
    broken = corpus.page_key(pages.eval_pages(HP.seed, 2, 1, corpus.PAGES, HELD_OUT)[0])

    def chaos(memory):
        return ChaosOpener(
            memory, FakeClock(), lambda b, op, key: fault if key == broken else Fault()
        )

    task = await lm(opener=chaos)
    with caplog.at_level(logging.WARNING):
        assert await task.eval_batches(2, 1) == []
    assert any(broken in r.getMessage() for r in caplog.records)


async def test_an_oversized_or_short_page_is_skipped(caplog):
    task = await lm()
    chosen = pages.train_pages(HP.seed, 1, 1, 2, corpus.PAGES, HELD_OUT)
    store = task.dataset._opener.open(local_dataset_bucket("write"))
    await store.put(corpus.page_key(chosen[0]), b"x" * (corpus.PAGE_BYTES + 1))
    await store.put(corpus.page_key(chosen[1]), b"too short")
    with caplog.at_level(logging.WARNING):
        assert await task.train_batches(1, 1, 2) == []
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 2


async def test_a_window_without_batches_fails_as_a_window():
    task = await lm()
    await task.dataset._opener.open(local_dataset_bucket("write")).delete(
        [corpus.page_key(i) for i in range(corpus.PAGES)]
    )
    with pytest.raises(NoBatches):
        window_gradient(task, task.model(), await task.train_batches(1, 1, 2))


async def test_the_model_has_a_few_million_parameters_and_starts_uniform():
    task = await lm()
    model = task.model()
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000
    batches = await task.train_batches(1, 1, 1)
    with torch.no_grad():
        first = float(task.loss(model, batches[0]))
    assert abs(first - torch.log(torch.tensor(256.0)).item()) < 0.3  # uniform over bytes
