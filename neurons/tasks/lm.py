"""The built-in `lm` task: a byte-level decoder-only transformer on the generated corpus.

Pages come from the dataset bucket (read-only; in the localnet, the local store the
localnet filled at start). Each miner's pages of a window, and where its sequences start in
them, follow from (seed, window, uid) (neurons/tasks/pages.py), so a validator can rebuild
any miner's batches; the validator evaluates on held-out pages no miner trains on. A page
that is missing, too large or unreadable costs its batch (a WARNING), never the window.
"""

from __future__ import annotations

import asyncio
import logging
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from neurons.task import ReadOnlyStore, TaskContext, TaskError
from neurons.tasks import corpus, pages
from neurons.tasks.transformer import VOCAB, ByteTransformer, ModelShape
from ports import StorageError

SHAPE = ModelShape(width=256, layers=4, heads=4, context=128)
HELD_OUT = 16
# Outer learning rate: warm up over the first steps, then a slow cosine to a tenth.
WARMUP_STEPS = 5
DECAY_STEPS = 2000
_EVAL_STREAM = 2**31 - 1
_CACHE_PAGES = 256


class LMTask:
    def __init__(
        self,
        dataset: ReadOnlyStore,
        *,
        seed: int,
        batch_size: int,
        learning_rate: float,
        device: str = "cpu",
        shape: ModelShape = SHAPE,
        page_count: int = corpus.PAGES,
        page_bytes: int = corpus.PAGE_BYTES,
        held_out: int = HELD_OUT,
        momentum: float = 0.0,
        log: logging.Logger | None = None,
    ) -> None:
        if page_bytes <= shape.context:
            raise ValueError("a page must be longer than the model's context")
        self.dataset = dataset
        self.seed = seed
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.device = torch.device(device)
        self.shape = shape
        self.page_count = page_count
        self.page_bytes = page_bytes
        self.held_out = held_out
        self.momentum = momentum
        self.log = log or logging.getLogger(__name__)
        self._cache: dict[int, bytes] = {}

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return ByteTransformer(self.shape).to(self.device)

    async def _page(self, index: int) -> bytes | None:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        key = corpus.page_key(index)
        try:
            blob = await self.dataset.get(key, max_bytes=self.page_bytes)
        except StorageError as exc:  # NotFound, TooLarge, AccessDenied, transient...
            self.log.warning("lm task: page %s unreadable, its batch skipped: %s", key, exc)
            return None
        data = bytes(blob.data)
        if len(data) <= self.shape.context:
            self.log.warning(
                "lm task: page %s has %d bytes, fewer than a sequence: its batch skipped",
                key,
                len(data),
            )
            return None
        if len(self._cache) >= _CACHE_PAGES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[index] = data
        return data

    def _batch(self, data: bytes, window: int, stream: int, page: int) -> torch.Tensor:
        span = self.shape.context + 1
        starts = pages.offsets(self.seed, window, stream, page, self.batch_size, len(data) - span)
        view = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        rows = torch.stack([view[s : s + span] for s in starts]).long()
        return rows.to(self.device)

    async def _batches(self, indices: list[int], window: int, stream: int) -> list[torch.Tensor]:
        found = await asyncio.gather(*(self._page(i) for i in indices))
        return [
            self._batch(data, window, stream, i)
            for i, data in zip(indices, found, strict=True)
            if data is not None
        ]

    async def train_batches(self, uid: int, window: int, count: int) -> list[torch.Tensor]:
        chosen = pages.train_pages(self.seed, window, uid, count, self.page_count, self.held_out)
        return await self._batches(chosen, window, uid)

    async def eval_batches(self, window: int, count: int) -> list[torch.Tensor]:
        chosen = pages.eval_pages(self.seed, window, count, self.page_count, self.held_out)
        return await self._batches(chosen, window, _EVAL_STREAM)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # Plain SGD by default (docs/operations.md's figures are for it). With `momentum`,
        # Nesterov SGD, the outer optimizer of DiLoCo: its buffers travel in checkpoints and
        # resume files, so a joiner continues with the momentum of a peer that never left.
        return torch.optim.SGD(
            model.parameters(),
            lr=self.learning_rate,
            momentum=self.momentum,
            nesterov=self.momentum > 0,
        )

    def scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        return LambdaLR(optimizer, schedule)


def schedule(step: int) -> float:
    """The outer learning rate's factor at `step`: linear warm-up, then cosine to 0.1."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / DECAY_STEPS)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def lm_task(context: TaskContext) -> LMTask:
    if context.dataset is None:
        raise TaskError(
            "lm",
            "the lm task reads its pages from the dataset bucket, and none is configured: "
            "set R2_DATASET_* (docs/tasks.md), or use --storage local",
        )
    hp = context.hparams
    return LMTask(
        context.dataset,
        seed=hp.seed,
        batch_size=hp.batch_size,
        learning_rate=hp.learning_rate,
        device=context.device,
        log=context.log,
    )
