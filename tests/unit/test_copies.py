"""Copy verdicts: the later of two similar uploads is the copy; the default threshold holds
honest peers of the tiny task below it and relabelled, perturbed copies above it."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
import torch

from core import duplicates
from core.compression import TopKCompressor, compress_with_feedback
from neurons.config import HParams, hparams_from_mapping
from neurons.copier import NOISE
from neurons.copies import CopyJudge
from neurons.localnet import localnet_hparams
from neurons.tasks.tiny import TinyTask
from neurons.training import outer_step, unit_normalised, window_gradient
from ports import ObjectMeta

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sketch(*positions: range) -> torch.Tensor:
    hashes = duplicates._mix(torch.tensor([p for r in positions for p in r], dtype=torch.int64))
    return torch.sort(hashes).values


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_later_of_two_similar_uploads_is_the_copy():
    sketches = {1: sketch(range(200)), 2: sketch(range(200)), 3: sketch(range(1000, 1200))}
    found = duplicates.later_copies(sketches, {1: at(1.0), 2: at(0.5), 3: at(0.0)}, 0.5)
    assert found == {1: (2, 1.0)}


def test_a_copy_of_a_copy_names_the_earliest_and_a_tie_flags_both():
    same = {u: sketch(range(300)) for u in (1, 2, 3)}
    found = duplicates.later_copies(same, {1: at(2), 2: at(1), 3: at(0)}, 0.5)
    assert found == {1: (3, 1.0), 2: (3, 1.0)}
    tied = duplicates.later_copies(same, {1: at(1), 2: at(1), 3: at(1)}, 0.5)
    assert tied == {1: (2, 1.0), 2: (1, 1.0), 3: (1, 1.0)}
    # an upload without a time loses to any upload with one
    assert duplicates.later_copies(same, {1: at(5), 3: at(9)}, 0.5) == {2: (1, 1.0), 3: (1, 1.0)}


def test_partly_overlapping_sets_are_flagged_only_above_the_threshold():
    a, b = sketch(range(0, 400)), sketch(range(200, 600))  # Jaccard 1/3
    times = {1: at(0), 2: at(1)}
    assert duplicates.later_copies({1: a, 2: b}, times, 0.5) == {}
    assert set(duplicates.later_copies({1: a, 2: b}, times, 0.2)) == {2}


def test_the_validators_verdicts_penalise_a_later_copy_and_leave_a_tie_unscored():
    compressor = TopKCompressor(HParams().topk_params())
    gen = torch.Generator().manual_seed(1)
    grads = [{"w": torch.randn(64, 64, generator=gen)} for _ in range(2)]
    sent = {1: grads[0], 2: grads[0], 3: grads[1], 4: grads[1]}
    times = {1: at(0), 2: at(1), 3: at(2), 4: at(2)}
    judge = CopyJudge(0.5, compressor)
    for uid, g in sent.items():
        judge.add(
            uid, compressor.encode(g), ObjectMeta(key=f"k{uid}", size=1, last_modified=times[uid])
        )
    verdicts = judge.verdicts()
    assert sorted(verdicts) == [2, 3, 4]
    assert verdicts[2].penalised and verdicts[2].reason.startswith("copy: copy_of_1: ")
    assert not verdicts[3].penalised and verdicts[3].reason.startswith("copy: tied_with_4: ")
    assert not verdicts[4].penalised and verdicts[4].reason.startswith("copy: tied_with_3: ")
    off = CopyJudge(0.0, compressor)
    off.add(1, compressor.encode(grads[0]), None)
    off.add(2, compressor.encode(grads[0]), None)
    assert off.verdicts() == {}


def similarities(hp: HParams, miners: int = 5, windows: int = 4) -> tuple[list, list]:
    """Pairwise similarities of honest miners training the tiny task with error feedback,
    and of each window's copies as `--faulty copier` makes them (decoded, noise, re-encoded)."""
    task, compressor = TinyTask(hp.seed, hp.batch_size), TopKCompressor(hp.topk_params())
    model = task.model()
    errors: dict[int, dict | None] = dict.fromkeys(range(1, miners + 1))
    honest, copies = [], []
    gen = torch.Generator().manual_seed(0)
    for window in range(windows):
        sent = {}
        for uid in errors:
            batches = asyncio.run(task.train_batches(uid, window, hp.inner_steps))
            _, grads = window_gradient(task, model, batches)
            fed = compress_with_feedback(compressor, grads, errors[uid], decay=hp.momentum_decay)
            errors[uid], sent[uid] = fed.residual, fed.compressed
        sketches = {u: duplicates.signature(compressor, c) for u, c in sent.items()}
        honest += [duplicates.similarity(sketches[a], sketches[b]) for a, b in
                   itertools.combinations(sketches, 2)]  # fmt: skip
        for uid, compressed in sent.items():
            dense = compressor.decode(compressed, device="cpu")
            noisy = {
                n: t + NOISE * float(t.std()) * torch.randn(t.shape, generator=gen)
                for n, t in dense.items()
            }
            copy = duplicates.signature(compressor, compressor.encode(noisy))
            copies.append(duplicates.similarity(sketches[uid], copy))
        mean = {}
        for compressed in sent.values():
            for name, t in unit_normalised(compressor.decode(compressed, device="cpu")).items():
                mean[name] = mean.get(name, 0) + t / miners
        outer_step(model, mean, hp.learning_rate)
    return honest, copies


@pytest.mark.parametrize(
    "hp",
    [HParams(), hparams_from_mapping(localnet_hparams(0.5))],
    ids=["defaults", "localnet"],
)
def test_the_default_threshold_separates_honest_peers_from_copies(hp):
    threshold = HParams().duplicate_threshold
    assert 0 < threshold < 1
    honest, copies = similarities(hp)
    # measured over 12 windows of 8 miners: honest at most 0.26 (defaults) / 0.38 (localnet)
    assert max(honest) < threshold - 0.1
    assert min(copies) > threshold + 0.3
