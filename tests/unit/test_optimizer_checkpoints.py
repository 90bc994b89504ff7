"""Optimizer and scheduler state through a checkpoint: saved without pickle, loaded only when
it is a state of the local optimizer and scheduler, and then continuing exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from core.checkpoints import (
    CheckpointMeta,
    CheckpointState,
    Mismatch,
    NoCheckpoint,
    apply_training_state,
    check_optimizer,
    check_scheduler,
    load_checkpoint,
    optimizer_headers,
    scheduler_headers,
)
from core.checkpoints.load import list_candidates, load_candidates
from core.checkpoints.optim_fit import MAX_STATE_ENTRIES
from neurons.config import hparams_from_mapping
from neurons.task import TaskContext, Training, load_task
from neurons.training import apply_aggregate
from tests.unit.checkpoint_helpers import VERSION, assert_same, setup, trained
from tests.unit.test_lm_task import dataset

TINY = hparams_from_mapping({"task": "tiny", "batch_size": 4, "seed": 5})
SMALL_LM = hparams_from_mapping(
    {"task": "tests.unit.task_factories:small_lm", "batch_size": 2, "seed": 5}
)


async def tiny() -> Training:
    return load_task(TaskContext(hparams=TINY))


async def small_lm() -> Training:
    _, store = await dataset()
    return load_task(TaskContext(hparams=SMALL_LM, dataset=store))


def outer_steps(training: Training, steps: int, seed: int = 0) -> None:
    """`steps` outer steps along seeded pseudo-aggregates."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        aggregate = {
            n: torch.randn(p.shape, generator=gen) for n, p in training.model.named_parameters()
        }
        apply_aggregate(training, aggregate)


def snapshot(training: Training) -> dict:
    return copy.deepcopy(
        {
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
        }
    )


def assert_same_training(a: Training, b: Training) -> None:
    assert_same(snapshot(a), snapshot(b))


@pytest.mark.parametrize("build", [tiny, small_lm], ids=["tiny", "lm"])
async def test_a_tasks_training_state_round_trips_and_continues_exactly(tmp_path, build):
    saved = await build()
    outer_steps(saved, 3)
    checkpointer, store, _, settings, _ = setup(tmp_path)
    state = CheckpointState(
        model=saved.model.state_dict(),
        optimizer=saved.optimizer.state_dict(),
        scheduler=saved.scheduler.state_dict(),
    )
    await checkpointer.save(state, CheckpointMeta(window=3, global_step=3, uid=0))
    fresh = await build()
    loaded = (await load_with_headers(store, settings, fresh)).state

    apply_training_state(
        fresh.model,
        fresh.optimizer,
        fresh.scheduler,
        model_state=loaded.model,
        optimizer_state=loaded.optimizer,
        scheduler_state=loaded.scheduler,
    )
    assert_same_training(fresh, saved)
    assert fresh.scheduler.last_epoch == 3
    if build is small_lm:  # Nesterov momentum: the buffers are real state, not zeros
        assert len(fresh.optimizer.state) == len(list(fresh.model.parameters()))
    outer_steps(saved, 2, seed=9)
    outer_steps(fresh, 2, seed=9)
    assert_same_training(fresh, saved)


async def load_with_headers(store, settings, training: Training, **kw):
    """A joiner's load: optimizer and scheduler shards checked from their headers."""
    candidates = await list_candidates(store, VERSION)
    return await load_candidates(
        candidates,
        settings,
        expect_headers={
            "optimizer": optimizer_headers(training.optimizer),
            "scheduler": scheduler_headers(training.scheduler),
        },
        **kw,
    )


async def test_foreign_optimizer_and_scheduler_tensors_are_refused_from_their_headers(tmp_path):
    source = await tiny()
    outer_steps(source, 1)
    bloated = copy.deepcopy(source.optimizer.state_dict())
    bloated["state"] = {0: {"momentum_buffer": torch.zeros(512, 512)}}  # no parameter's shape
    scheduler = dict(source.scheduler.state_dict(), planted=torch.zeros(8))
    checkpointer, store, _, settings, _ = setup(tmp_path)
    for window, (optimizer, sched, reason) in enumerate(
        [
            (bloated, source.scheduler.state_dict(), "neither a scalar nor the parameter's"),
            (source.optimizer.state_dict(), scheduler, "not in the local scheduler's state"),
        ],
        start=1,
    ):
        state = CheckpointState(
            model=source.model.state_dict(), optimizer=optimizer, scheduler=sched
        )
        await checkpointer.save(state, CheckpointMeta(window=window, global_step=1, uid=0))
        with pytest.raises(NoCheckpoint) as refused:
            await load_with_headers(store, settings, await tiny(), tries=1)
        assert reason in refused.value.skipped[0].reason
    # Without the header checks both download (and would fail only when applied).
    assert (await load_checkpoint(store, settings)).window == 2


def adamw_training():
    model, opt, sched, _ = trained(steps=3)
    return model, opt, sched


def test_an_adamw_state_with_a_sequential_schedule_passes_the_checks():
    model, opt, sched = adamw_training()
    check_optimizer(opt, opt.state_dict())
    check_scheduler(sched, sched.state_dict())
    other_model, other_opt, other_sched = adamw_training()
    apply_training_state(
        other_model,
        other_opt,
        other_sched,
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
    )


def _tamper(state, path, value):
    node = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return state


HOSTILE = {
    "a buffer of another shape": (("state", 0, "exp_avg"), torch.zeros(3, 3), "shape"),
    "a non-finite buffer": (("state", 0, "exp_avg_sq"), None, "not finite"),
    "a parameter it lacks": (("state", 99), {"step": torch.tensor(1.0)}, "lacks"),
    "a string learning rate": (("param_groups", 0, "lr"), "0.1", "number"),
    "an infinite learning rate": (("param_groups", 0, "lr"), float("inf"), "inf"),
    "other parameter indices": (("param_groups", 0, "params"), [0, 1, 2, 7], "other parameters"),
    "booleans for indices": (("param_groups", 0, "params"), [0, True, 2, 3], "other parameters"),
    "another beta pair": (("param_groups", 0, "betas"), (0.9,), "tuple"),
    "an unknown hyperparameter": (("param_groups", 0, "sneaky"), 1, "keys"),
    "a pickled object": (("state", 0, "extra"), object(), "object"),
    "too many entries": (
        ("state", 0),
        {f"k{i}": 0.0 for i in range(MAX_STATE_ENTRIES + 1)},
        "small dict",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_optimizer_state_is_refused_with_a_reason(case):
    path, value, reason = HOSTILE[case]
    model, opt, sched = adamw_training()
    state = copy.deepcopy(opt.state_dict())
    if value is None:
        value = state["state"][0]["exp_avg_sq"].clone()
        value.view(-1)[0] = float("nan")
    _tamper(state, path, value)
    before = snapshot_parts(model, opt, sched)
    with pytest.raises(Mismatch, match=reason):
        apply_training_state(
            model,
            opt,
            sched,
            model_state=model.state_dict(),
            optimizer_state=state,
            scheduler_state=sched.state_dict(),
        )
    assert_same(snapshot_parts(model, opt, sched), before)


def snapshot_parts(model, opt, sched) -> dict:
    return copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    )


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda s: s.update(last_epoch=-5), "step count"),
        (lambda s: s.update(last_epoch="3"), "number"),
        (lambda s: s.pop("_milestones"), "keys"),
        (lambda s: s["_schedulers"].pop(), "list"),
        (lambda s: s.update(_last_lr=[float("nan")]), "nan"),
    ],
)
def test_a_hostile_scheduler_state_is_refused_with_a_reason(tamper, reason):
    _, _, sched = adamw_training()
    state = copy.deepcopy(sched.state_dict())
    tamper(state)
    with pytest.raises(Mismatch, match=reason):
        check_scheduler(sched, state)


async def test_another_tasks_optimizer_state_is_refused_and_nothing_changes():
    lm = await small_lm()
    outer_steps(lm, 2)
    target = await tiny()
    outer_steps(target, 1)
    before = snapshot(target)
    with pytest.raises(Mismatch):
        check_optimizer(target.optimizer, lm.optimizer.state_dict())
    with pytest.raises(Mismatch, match="no optimizer state"):
        apply_training_state(
            target.model,
            target.optimizer,
            target.scheduler,
            model_state=target.model.state_dict(),
            optimizer_state=None,
            scheduler_state=target.scheduler.state_dict(),
        )
    assert_same(snapshot(target), before)


async def test_a_failure_after_the_model_loaded_restores_all_three(monkeypatch):
    source, target = await tiny(), await tiny()
    outer_steps(source, 2)
    outer_steps(target, 1, seed=3)
    before = snapshot(target)
    optimizer_state = source.optimizer.state_dict()

    kind = type(target.scheduler)
    real, calls = kind.load_state_dict, []

    def broken(self, state):  # passes the checks, fails inside torch the first time
        calls.append(state)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        real(self, state)

    monkeypatch.setattr(kind, "load_state_dict", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        apply_training_state(
            target.model,
            target.optimizer,
            target.scheduler,
            model_state=source.model.state_dict(),
            optimizer_state=optimizer_state,
            scheduler_state=source.scheduler.state_dict(),
        )
    assert_same(snapshot(target), before)
