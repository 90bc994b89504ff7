"""The Chain contract: what every chain adapter must do, run against each of them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from ports import Chain, ChainError
from tests.contract.chain_cases import CHAIN_FACTORIES, ChainCase, make_bucket


@pytest.fixture(params=sorted(CHAIN_FACTORIES))
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChainCase]:
    async with CHAIN_FACTORIES[request.param](tmp_path) as made:
        yield made


def neuron(case: ChainCase, name: str, **admin: object) -> tuple[str, int, Chain]:
    hotkey = case.new_hotkey(name)
    uid = case.admin.register(hotkey, **admin)
    return hotkey, uid, case.open_chain(hotkey)


async def test_adapter_implements_the_port(case: ChainCase) -> None:
    _, _, chain = neuron(case, "alice")
    assert isinstance(chain, Chain)


async def test_blocks_advance_with_the_clock(case: ChainCase) -> None:
    _, _, chain = neuron(case, "alice")
    case.advance_blocks(case.finality_lag)  # past genesis, where nothing trails
    first = await chain.current_block()
    case.advance_blocks(3)
    assert await chain.current_block() == first + 3
    case.advance_blocks(0.5)
    assert await chain.current_block() == first + 3
    case.advance_blocks(0.5)
    assert await chain.current_block() == first + 4


async def test_block_timestamps_are_spaced_by_the_block_time(case: ChainCase) -> None:
    _, _, chain = neuron(case, "alice")
    case.advance_blocks(10)
    block = await chain.current_block()
    stamp = await chain.block_timestamp(block)
    earlier = await chain.block_timestamp(block - 4)
    assert stamp.utcoffset() == timedelta(0)
    assert stamp - earlier == timedelta(seconds=4 * case.block_time)
    assert stamp <= case.clock.now()


async def test_the_finalised_block_trails_the_head_by_the_finality_lag(case: ChainCase) -> None:
    _, _, chain = neuron(case, "alice")
    case.advance_blocks(10)
    head, final = await chain.head_block(), await chain.current_block()
    assert head - final == case.finality_lag
    # The head's timestamp is readable (it is not in the future) and not after now.
    assert await chain.block_timestamp(final) <= await chain.block_timestamp(head)
    assert await chain.block_timestamp(head) <= case.clock.now()


async def test_future_and_negative_blocks_are_value_errors(case: ChainCase) -> None:
    _, _, chain = neuron(case, "alice")
    block = await chain.current_block()
    with pytest.raises(ValueError):
        await chain.block_timestamp(block + 1000)
    with pytest.raises(ValueError):
        await chain.block_timestamp(-1)


async def test_commit_writes_only_when_the_value_differs(case: ChainCase) -> None:
    _, uid, chain = neuron(case, "alice")
    assert await chain.commit_bucket(make_bucket(1)) is True
    assert await chain.commit_bucket(make_bucket(1)) is False
    assert await chain.commit_bucket(make_bucket(2)) is True
    assert (await chain.bucket_commitments())[uid] == make_bucket(2)


async def test_commitments_are_seen_by_every_neuron_by_uid(case: ChainCase) -> None:
    _, alice_uid, alice = neuron(case, "alice")
    _, bob_uid, bob = neuron(case, "bob")
    await alice.commit_bucket(make_bucket(1))
    await bob.commit_bucket(make_bucket(2))
    expected = {alice_uid: make_bucket(1), bob_uid: make_bucket(2)}
    assert await alice.bucket_commitments() == expected
    assert await bob.bucket_commitments() == expected


async def test_committed_bucket_reads_back_as_templar_does(case: ChainCase) -> None:
    _, uid, chain = neuron(case, "alice")
    await chain.commit_bucket(make_bucket(7))
    read = (await chain.bucket_commitments())[uid]
    assert read.name == read.account_id == make_bucket(7).account_id
    assert read.secret_access_key == make_bucket(7).secret_access_key
    assert read.endpoint_url == f"https://{read.account_id}.r2.cloudflarestorage.com"


async def test_unregistered_neuron_cannot_commit_or_set_weights(case: ChainCase) -> None:
    neuron(case, "alice")
    stranger = case.open_chain(case.new_hotkey("mallory"))
    with pytest.raises(ChainError):
        await stranger.commit_bucket(make_bucket(1))
    with pytest.raises(ChainError):
        await stranger.set_weights([0], [1.0])


async def test_bucket_that_cannot_be_a_commitment_is_refused_without_the_secret(
    case: ChainCase,
) -> None:
    _, _, chain = neuron(case, "alice")
    bucket = make_bucket(1)
    for bad in (
        attrs.evolve(bucket, name="another-name"),
        attrs.evolve(bucket, secret_access_key="too-short"),
        attrs.evolve(bucket, access_key_id="x" * 33),
    ):
        with pytest.raises(ValueError) as raised:
            await chain.commit_bucket(bad)
        assert bucket.secret_access_key not in str(raised.value)
        assert "too-short" not in str(raised.value)
    assert await chain.bucket_commitments() == {}


async def test_malformed_commitments_are_skipped_per_uid_and_logged(
    case: ChainCase, caplog: pytest.LogCaptureFixture
) -> None:
    _, alice_uid, alice = neuron(case, "alice")
    hostile = []
    for name, raw in (
        ("short", "abc"),
        ("long", make_bucket(3).account_id * 5),
        ("badhost", "evil.example.com/" + "a" * 111),
        ("spaces", "a" * 64 + " " * 64),
        ("empty", ""),
    ):
        hotkey, uid, _ = neuron(case, name)
        case.admin.write_raw_commitment(hotkey, raw)
        hostile.append(uid)
    await alice.commit_bucket(make_bucket(1))
    with caplog.at_level(logging.WARNING):
        assert await alice.bucket_commitments() == {alice_uid: make_bucket(1)}
    logged = caplog.text
    for uid in hostile:
        assert f"uid {uid}" in logged
    assert "evil.example.com" not in logged


async def test_commitments_of_unregistered_hotkeys_are_ignored(case: ChainCase) -> None:
    _, uid, alice = neuron(case, "alice")
    case.admin.write_raw_commitment(case.new_hotkey("ghost"), "0" * 128)
    await alice.commit_bucket(make_bucket(1))
    assert await alice.bucket_commitments() == {uid: make_bucket(1)}


async def test_metagraph_reflects_registrations_stakes_incentives_and_permits(
    case: ChainCase,
) -> None:
    alice_key, alice_uid, chain = neuron(case, "alice", stake=1000.0, validator_permit=True)
    bob_key, bob_uid, _ = neuron(case, "bob", stake=5.0, incentive=0.25)
    case.admin.set_stake(bob_key, 2000.0)
    case.admin.set_validator_permit(bob_key, True)
    case.admin.set_incentive(alice_key, 0.5)
    graph = await chain.metagraph()
    assert graph.uids == (alice_uid, bob_uid) == (0, 1)
    assert graph.hotkeys == (alice_key, bob_key)
    assert graph.stakes == pytest.approx((1000.0, 2000.0))
    assert graph.incentives == pytest.approx((0.5, 0.25), abs=1e-4)
    assert graph.validator_permits == (True, True)
    assert graph.validators() == (bob_uid, alice_uid)
    assert graph.uid(alice_key) == alice_uid
    assert abs(graph.block - await chain.current_block()) <= 2


async def test_set_weights_is_stored_normalised(case: ChainCase) -> None:
    alice_key, _, chain = neuron(case, "alice", validator_permit=True)
    _, bob_uid, _ = neuron(case, "bob")
    _, carol_uid, _ = neuron(case, "carol")
    await chain.set_weights([bob_uid, carol_uid], [3.0, 1.0])
    weights = case.admin.weights(alice_key)
    assert weights.keys() == {bob_uid, carol_uid}
    assert weights[bob_uid] == pytest.approx(0.75, abs=1e-4)
    assert weights[carol_uid] == pytest.approx(0.25, abs=1e-4)


async def test_set_weights_refuses_bad_input_before_the_chain(case: ChainCase) -> None:
    alice_key, _, chain = neuron(case, "alice")
    for uids, weights in (([0, 1], [1.0]), ([0], [-1.0]), ([0], [float("nan")]), ([0], [0.0])):
        with pytest.raises(ValueError):
            await chain.set_weights(uids, weights)
    assert case.admin.weights(alice_key) == {}


async def test_set_weights_for_unknown_uids_is_a_chain_error(case: ChainCase) -> None:
    _, _, chain = neuron(case, "alice")
    with pytest.raises(ChainError):
        await chain.set_weights([0, 99], [1.0, 1.0])
