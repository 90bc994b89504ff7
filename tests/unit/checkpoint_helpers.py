"""A tiny model trained a few steps, so optimizer, scheduler and momentum all hold state."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.clock import FakeClock
from adapters.scratch import TempScratch
from adapters.storage.memory import MemoryStoreOpener
from core.checkpoints import Checkpointer, CheckpointMeta, CheckpointSettings, CheckpointState
from ports import Bucket, ObjectStore

VERSION = "1.0.0"


def bucket(name: str = "ckpt") -> Bucket:
    return Bucket(name=name, account_id="acct", access_key_id="key", secret_access_key="secret")


def trained(seed: int = 0, steps: int = 3):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[2])
    momentum = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for _ in range(steps):
        step(model, opt, sched, momentum)
    return model, opt, sched, momentum


def step(model, opt, sched, momentum) -> None:
    x = torch.randn(5, 8)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    for n, p in model.named_parameters():
        momentum[n].mul_(0.9).add_(p.grad)
    opt.step()
    sched.step()


def state_of(model, opt, sched, momentum) -> CheckpointState:
    return CheckpointState(
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        momentum=momentum,
    )


def setup(tmp_path: Path, store: ObjectStore | None = None, **settings):
    clock = FakeClock()
    store = store or MemoryStoreOpener(clock).open(bucket())
    scratch = TempScratch(tmp_path / "scratch")
    cfg = CheckpointSettings(version=VERSION, **settings)
    return Checkpointer(store, scratch, clock, cfg), store, scratch, cfg, clock


def meta(window: int, step: int = 0) -> CheckpointMeta:
    return CheckpointMeta(window=window, global_step=step or window * 10, uid=1, hotkey="hk")


def assert_same(a, b) -> None:
    """Equal structure, types and bit patterns (tensors: dtype, shape and bytes)."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for k in a:
            assert type(k) is type(list(b.keys())[list(a.keys()).index(k)])
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b
