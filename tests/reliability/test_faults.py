"""Storage faults under gather, injected by the chaos store on a fake clock (no sleeping).

Each fault costs only the peers it hits: they are skipped with the right reason, reserves
take their places, the rest aggregate exactly, and no damaged body is ever accepted.
"""

from __future__ import annotations

import pytest
import torch

from adapters.signing import HmacSigner, HmacVerifier
from core.codec import Expected
from core.fetch import FetchSettings
from core.gather import GatherSettings
from ports import AccessDenied, TransientStorageError
from tests.reliability.support import COMP, NO_FAULT, SHAPES, Fault, Net, V, encode, reference


def _on(uids, fault: Fault):
    """Fault `fault` on reads from the buckets of `uids`, nothing elsewhere."""
    names = {f"peer-{u}" for u in uids}
    return lambda bucket, op, key: fault if bucket in names and op == "get" else NO_FAULT


def _assert_aggregate_of(result, uids) -> None:
    want = reference(sorted(uids))
    assert sorted(result.uids) == sorted(uids)
    for name in SHAPES:
        torch.testing.assert_close(result.aggregate[name], want[name], rtol=1e-6, atol=1e-7)


async def _net_with(faults, uids=range(1, 13), **kw) -> Net:
    net = Net(faults, **kw)
    for uid in uids:
        await net.upload(uid, encode(uid))
    return net


async def test_latency_spikes_inside_the_deadline_cost_nothing() -> None:
    net = await _net_with(_on(range(1, 13, 2), Fault(latency=7.0)))
    result = await net.gather(range(1, 13), timeout=10)
    _assert_aggregate_of(result, range(1, 13))
    assert result.skipped == {} and 7.0 <= result.seconds <= 10.0


async def test_latency_spikes_past_the_deadline_are_skipped_as_timeouts() -> None:
    net = await _net_with(_on((3, 4), Fault(latency=500.0)))
    result = await net.gather(range(1, 9), timeout=10)
    _assert_aggregate_of(result, [1, 2, 5, 6, 7, 8])
    assert {u: r.split(": ")[:2] for u, r in result.skipped.items()} == {
        3: ["error", "timeout"],
        4: ["error", "timeout"],
    }


async def test_a_slow_peer_gives_way_to_a_reserve_within_the_deadline() -> None:
    net = await _net_with(_on((2,), Fault(latency=500.0)))
    settings = GatherSettings(fetch=FetchSettings(timeout=30, peer_timeout=5))
    result = await net.gather([1, 2, 3], reserve_uids=[9], settings=settings)
    # The slow fetch is abandoned at its peer timeout on the gather's clock; its reserve
    # lands in its place. (A fetch hung in real time is cancelled by the real-time guard,
    # proven over SeaweedFS in test_s3_faults.py.)
    assert 9 in result.uids and result.skipped[2].startswith("error: timeout")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (lambda m: TransientStorageError(f"{m}: SlowDown (503) after retries"), "transient"),
        (lambda m: TransientStorageError(f"{m}: 500 InternalError after retries"), "transient"),
        (lambda m: TransientStorageError(f"{m}: connection reset by peer"), "transient"),
        (lambda m: AccessDenied(f"{m}: read key revoked"), "access_denied"),
    ],
    ids=["throttled", "5xx", "reset", "denied"],
)
async def test_failing_reads_are_skipped_with_their_reason_and_reserves_fill_in(
    error, reason
) -> None:
    net = await _net_with(_on((2, 5), Fault(error_rate=1.0, error=error)))
    result = await net.gather([1, 2, 3, 4, 5], reserve_uids=[10, 11, 12])
    _assert_aggregate_of(result, [1, 3, 4, 10, 11])
    assert {u: r.split(": ")[:2] for u, r in result.skipped.items()} == {
        2: ["error", reason],
        5: ["error", reason],
    }
    assert result.success_rate == 1.0


async def test_intermittent_failures_on_every_bucket_never_escape_gather() -> None:
    flaky = Fault(latency=0.2, error_rate=0.3, error=TransientStorageError)
    net = await _net_with(lambda b, op, k: flaky if op == "get" else NO_FAULT, range(1, 61))
    result = await net.gather(range(1, 41), reserve_uids=range(41, 61))
    assert len(result.uids) + len(result.skipped) >= 40
    assert all(r.startswith("error: transient") for r in result.skipped.values())
    _assert_aggregate_of(result, result.uids)


async def test_truncated_bodies_are_never_read_as_valid() -> None:
    uids = range(1, 101)
    net = await _net_with(_on(uids, Fault(truncate_rate=1.0)), uids, seed=7)
    result = await net.gather(uids)
    assert result.uids == () and result.aggregate is None
    reasons = {r.split(": ")[1] for r in result.skipped.values()}
    assert reasons <= {"bad_header", "header_too_large"}, reasons


async def test_corrupted_bodies_of_signed_payloads_are_never_accepted() -> None:
    keys = {f"hk{u}": f"key-{u}".encode() for u in range(1, 41)}
    net = Net(_on(range(1, 31), Fault(corrupt_rate=1.0)), seed=3)
    net.expected = Expected(
        version=V, codec=COMP, shapes=SHAPES, require_signature=True, hotkey="set-per-uid"
    )
    for uid in range(1, 41):
        await net.upload(uid, encode(uid, signer=HmacSigner(keys[f"hk{uid}"])))
    result = await net.gather(
        range(1, 41), hotkeys={u: f"hk{u}" for u in range(1, 41)}, verifier=HmacVerifier(keys)
    )
    assert set(result.skipped) == set(range(1, 31)), result.skipped
    assert all(r.startswith("invalid: ") for r in result.skipped.values()), result.skipped
    _assert_aggregate_of(result, range(31, 41))


async def test_corrupted_unsigned_bodies_never_crash_gather_nor_poison_the_mean() -> None:
    """Without signatures a flipped value bit can pass as an honest value (see
    docs/reliability.md); everything else is caught, and what passes is finite and normalised."""
    uids = range(1, 61)
    net = await _net_with(_on(uids, Fault(corrupt_rate=1.0)), uids, seed=11)
    result = await net.gather(uids)
    assert len(result.uids) + len(result.skipped) == 60
    assert all(r.startswith("invalid: ") for r in result.skipped.values())
    if result.ok:
        for tensor in result.aggregate.values():
            assert torch.isfinite(tensor).all()
        # unit normalisation: the mean of unit vectors has norm <= 1 per parameter
        assert all(float(t.norm()) <= 1.0 + 1e-5 for t in result.aggregate.values())
