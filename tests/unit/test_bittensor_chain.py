"""The Bittensor adapter beyond the contract: retries, reconnection, what goes on the wire."""

from __future__ import annotations

import asyncio
import logging

import pytest

from adapters.chain.bittensor import BittensorChain
from adapters.clock import FakeClock
from ports import ChainError
from tests.contract.chain_cases import make_bucket
from tests.support.fake_substrate import FakeSubstrate, FakeSubtensor


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(clock: FakeClock) -> FakeSubtensor:
    return FakeSubtensor(clock)


def open_chain(node: FakeSubtensor, name: str = "alice", **options: object) -> BittensorChain:
    hotkey = node.new_hotkey(name)
    node.register(hotkey)
    options.setdefault("substrate_factory", node.substrate)
    return BittensorChain(
        netuid=node.netuid,
        wallet=node.wallet(hotkey),
        network="local",
        clock=node.clock,
        **options,
    )


async def test_connects_lazily_and_reuses_the_connection(node: FakeSubtensor) -> None:
    chain = open_chain(node)
    assert node.connections == 0
    await chain.current_block()
    await chain.metagraph()
    await chain.bucket_commitments()
    assert node.connections == 1


async def test_dropped_connection_is_rebuilt_and_the_call_retried(
    node: FakeSubtensor, caplog: pytest.LogCaptureFixture
) -> None:
    chain = open_chain(node)
    await chain.current_block()
    node.fail_next(2)
    with caplog.at_level(logging.WARNING):
        assert await chain.commit_bucket(make_bucket(1)) is True
    assert node.connections == 3
    assert "reconnecting" in caplog.text
    assert make_bucket(1).secret_access_key not in caplog.text


async def test_refused_connections_are_retried(node: FakeSubtensor) -> None:
    chain = open_chain(node)
    node.fail_next(3)
    assert await chain.current_block() >= 0


async def test_unreachable_chain_is_a_chain_error_after_the_retries(
    node: FakeSubtensor, clock: FakeClock
) -> None:
    chain = open_chain(node, attempts=3, backoff_initial=1.0)
    node.fail_next(100)
    started = clock.monotonic()
    with pytest.raises(ChainError, match="after 3 attempts"):
        await chain.metagraph()
    assert node.failures == 97
    # Backoff waited on the injected clock (so the test never sleeps), and did wait.
    assert clock.monotonic() - started >= 2.0
    node.failures = 0
    assert (await chain.metagraph()).uids == (0,)


async def test_chain_side_rejection_is_not_retried(node: FakeSubtensor) -> None:
    stranger = BittensorChain(
        netuid=node.netuid,
        wallet=node.wallet(node.new_hotkey("mallory")),
        network="local",
        substrate_factory=node.substrate,
        clock=node.clock,
    )
    with pytest.raises(ChainError, match="HotKeyNotRegisteredInNetwork"):
        await stranger.commit_bucket(make_bucket(1))
    assert node.submitted == [("Commitments", "set_commitment")]


async def test_commitment_goes_on_chain_as_one_raw128_field(node: FakeSubtensor) -> None:
    chain = open_chain(node)
    await chain.commit_bucket(make_bucket(4))
    record = node.commitments[chain.hotkey]
    (field,) = record["info"]["fields"]
    (variant, value) = field.popitem()
    assert variant == "Raw128"
    assert bytes.fromhex(value.removeprefix("0x")).decode() == (
        make_bucket(4).account_id + make_bucket(4).access_key_id + make_bucket(4).secret_access_key
    )


async def test_unchanged_commitment_is_not_resubmitted(node: FakeSubtensor) -> None:
    chain = open_chain(node)
    await chain.commit_bucket(make_bucket(1))
    await chain.commit_bucket(make_bucket(1))
    assert node.submitted == [("Commitments", "set_commitment")]


async def test_undecodable_and_sealed_commitments_are_skipped(
    node: FakeSubtensor, caplog: pytest.LogCaptureFixture
) -> None:
    chain = open_chain(node)
    binary = node.new_hotkey("binary")
    sealed = node.new_hotkey("sealed")
    odd = node.new_hotkey("odd")
    binary_uid, sealed_uid, odd_uid = (node.register(k) for k in (binary, sealed, odd))
    node.write_raw_commitment(binary, b"\xff" * 128)
    node.write_fields(sealed, [{"TimelockEncrypted": {"encrypted": "0x00", "reveal_round": 7}}])
    node.write_fields(odd, ["ResetBondsFlag", {"Sha256": "0x" + "00" * 32}])
    await chain.commit_bucket(make_bucket(1))
    with caplog.at_level(logging.WARNING):
        assert await chain.bucket_commitments() == {0: make_bucket(1)}
    for uid in (binary_uid, sealed_uid, odd_uid):
        assert f"uid {uid}" in caplog.text


async def test_set_weights_submits_u16_weights_through_the_sdk(node: FakeSubtensor) -> None:
    chain = open_chain(node)
    bob = node.new_hotkey("bob")
    bob_uid = node.register(bob)
    await chain.set_weights([0, bob_uid], [1.0, 3.0])
    uids, values = node.weight_rows[chain.hotkey]
    assert uids == [0, bob_uid]
    assert values == [21845, 65535]


async def test_block_timestamp_is_the_timestamp_storage_at_that_block(
    node: FakeSubtensor, clock: FakeClock
) -> None:
    chain = open_chain(node)
    clock.advance(120)
    block = await chain.current_block()
    stamp = await chain.block_timestamp(block)
    assert stamp.timestamp() * 1000 == node.timestamp_ms(block)


async def test_head_instead_of_finalised_block_is_an_option(node: FakeSubtensor) -> None:
    finalised = open_chain(node)
    head = open_chain(node, "bob", finalized=False)
    assert await head.current_block() == await finalised.current_block() + 2


async def test_a_silent_endpoint_times_out_and_is_replaced(node: FakeSubtensor) -> None:
    class Silent(FakeSubstrate):
        async def finalized_block_number(self) -> int:
            await asyncio.Event().wait()
            raise AssertionError("never answers")

    made: list[FakeSubstrate] = []

    def factory() -> FakeSubstrate:
        # The first connection never answers; the rebuilt one does.
        substrate = node.substrate() if made else Silent(node)
        made.append(substrate)
        return substrate

    chain = open_chain(node, substrate_factory=factory, call_timeout=0.05)
    assert await chain.current_block() >= 0
    assert len(made) == 2
    assert made[0].open is False
