"""Neurons step the task's optimizer and scheduler, and a window whose batches cannot be
read leaves no neuron off the network's trajectory."""

from __future__ import annotations

import math

import attrs
import torch

from tests.unit.test_neurons import HP, Net


def weights(neuron) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in neuron.model.named_parameters()}


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)


async def test_every_neuron_steps_its_tasks_optimizer_in_lockstep(tmp_path):
    net = Net(tmp_path, miners=2)
    await net.run(4)
    steps = net.validator.global_step
    assert steps > 0
    for neuron in [net.validator, *net.miners]:
        assert neuron.training.scheduler.last_epoch == neuron.global_step == steps
        assert same_weights(neuron, net.validator)


async def test_unreadable_batches_cost_scores_and_uploads_not_the_trajectory(tmp_path):
    hparams = attrs.evolve(HP, task="tests.unit.task_factories:starved")
    net = Net(tmp_path, miners=2, hparams=hparams)
    await net.run(6)
    rows = net.validator_rows()
    assert len(rows) == 6
    starved = [r for r in rows if r["window"] % 2 == 0]
    assert starved and all(r["evaluations"] == {} and math.isnan(r["loss"]) for r in starved)
    assert all(r["published_bytes"] > 0 for r in rows)  # aggregated and stepped regardless
    miner_rows = [
        r for r in net.rows if r.get("event") == "window" and r["role"] == "miner" and r["uid"] == 1
    ]
    odd = [r for r in miner_rows if r["window"] % 2]
    assert odd and all(r["upload"] == "no_batches" and r["applied"] for r in odd)
    assert not any(r.get("event") == "window_failed" for r in net.rows)
    for miner in net.miners:
        assert same_weights(miner, net.validator)
