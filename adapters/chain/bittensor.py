"""The `Chain` port on a real subnet, through the bittensor SDK (v11, the async `Client`).

The SDK's async client runs on our own event loop, so no worker threads are needed. Every
port call goes through `_call`: transient failures (the RPC connection dropped, timed out or
was refused) are retried with exponential backoff and jitter, and the connection is rebuilt
before the next attempt; a chain-side rejection is not retried. Whatever is left is raised as
`ports.ChainError`, never as an SDK exception.

The SDK's own seam, `bittensor.Substrate`, is where tests inject an in-memory substrate:
pass `substrate_factory`, which is called once per (re)connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import bittensor as bt
import tenacity
from bittensor import settings as bt_settings
from bittensor.intents import SetWeights
from websockets.exceptions import WebSocketException

from adapters.chain.commitment import MalformedCommitment, encode_bucket, parse_commitment
from adapters.chain.weights import normalised_weights
from ports import Bucket, ChainError, Clock, Metagraph

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures of the connection, not of the request: worth a new connection and another try.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    bt.RpcConnectionError,
    bt.ConnectionNotReady,
    ConnectionError,
    TimeoutError,
    OSError,
    WebSocketException,
)


def _default_substrate_factory(network: str) -> Callable[[], bt.Substrate]:
    name, endpoint = bt_settings.resolve_endpoint(network)

    def make() -> bt.Substrate:
        return bt.RpcSubstrate(
            endpoint,
            fallback_endpoints=[
                url for url in bt_settings.default_fallback_endpoints(name) if url != endpoint
            ],
            archive_endpoints=bt_settings.default_archive_endpoints(name),
        )

    return make


class BittensorChain:
    """One neuron (the wallet's hotkey) on subnet `netuid` of a Bittensor network."""

    def __init__(
        self,
        *,
        netuid: int,
        wallet: bt.WalletLike,
        network: str = "finney",
        substrate_factory: Callable[[], bt.Substrate] | None = None,
        finalized: bool = True,
        attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 15.0,
        call_timeout: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.netuid = netuid
        self.network = network
        self._wallet = wallet
        self.hotkey: str = bt.public_view(wallet, "hotkey").ss58_address
        self._make_substrate = substrate_factory or _default_substrate_factory(network)
        self._finalized = finalized
        self._attempts = attempts
        self._wait = tenacity.wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        self._call_timeout = call_timeout
        # Backoff sleeps on the injected clock, so tests retry without waiting.
        self._sleep = clock.sleep if clock is not None else asyncio.sleep
        self._client: bt.Client | None = None
        self._connect_lock = asyncio.Lock()

    # Connection -------------------------------------------------------------------------

    async def _connected(self) -> bt.Client:
        async with self._connect_lock:
            if self._client is None:
                substrate = self._make_substrate()
                # Connect the substrate, not the Client: Client.connect also scans every
                # subnet's token symbol into a cache under ~/.bittensor, which we never show.
                try:
                    await substrate.connect()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await substrate.close()
                    raise
                self._client = bt.Client(self.network, substrate=substrate)
            return self._client

    async def _discard(self, client: bt.Client) -> None:
        """Drop a failed connection so the next attempt builds a fresh one."""
        async with self._connect_lock:
            if self._client is client:
                self._client = None
        with contextlib.suppress(Exception):
            await client.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _call(self, what: str, op: Callable[[bt.Client], Awaitable[T]]) -> T:
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(TRANSIENT_ERRORS),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    client: bt.Client | None = None
                    try:
                        # The timeout covers connecting too: a silent endpoint must not hang us.
                        async with asyncio.timeout(self._call_timeout):
                            client = await self._connected()
                            return await op(client)
                    except TRANSIENT_ERRORS as exc:
                        log.warning(
                            "chain %s failed (attempt %d of %d), reconnecting: %s",
                            what,
                            attempt.retry_state.attempt_number,
                            self._attempts,
                            type(exc).__name__,
                        )
                        if client is not None:
                            await self._discard(client)
                        raise
        except TRANSIENT_ERRORS as exc:
            raise ChainError(f"chain {what} failed after {self._attempts} attempts: {exc}") from exc
        except bt.BittensorError as exc:
            raise ChainError(f"chain {what} failed: {exc}") from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    # The Chain port ---------------------------------------------------------------------

    async def current_block(self) -> int:
        if self._finalized:
            return await self._call("current block", lambda c: c.finalized_block())
        return await self._call("current block", lambda c: c.block())

    async def head_block(self) -> int:
        return await self._call("head block", lambda c: c.block())

    async def block_timestamp(self, block: int) -> datetime:
        if block < 0:
            raise ValueError(f"block {block} is negative")

        async def read(client: bt.Client) -> datetime | None:
            # Checked against the head, because a future block has no hash and the SDK would
            # then read the head's timestamp instead.
            if block > await client.block():
                return None
            return await client.timestamp(block)

        stamp = await self._call("block timestamp", read)
        if stamp is None:
            raise ValueError(f"block {block} is in the future")
        return stamp.astimezone(UTC)

    async def metagraph(self) -> Metagraph:
        graph = await self._call(
            "metagraph", lambda c: c.subnets.metagraph(self.netuid, commitments=False)
        )
        if graph is None:
            raise ChainError(f"subnet {self.netuid} does not exist")
        neurons = graph.neurons
        return Metagraph(
            block=graph.block,
            uids=[n.uid for n in neurons],
            hotkeys=[n.hotkey for n in neurons],
            # The subnet's stake weight, in its own alpha units (dTAO), as Templar reads it.
            stakes=[float(n.total_stake.amount) for n in neurons],
            incentives=[float(n.incentive) for n in neurons],
            validator_permits=[bool(n.validator_permit) for n in neurons],
        )

    async def bucket_commitments(self) -> dict[int, Bucket]:
        records = await self._call("commitments", lambda c: c.subnets.commitments(self.netuid))
        buckets: dict[int, Bucket] = {}
        for hotkey, record in records.items():
            if record.uid is None:
                log.debug("commitment of deregistered hotkey %s ignored", hotkey)
                continue
            try:
                value = record.value
                if value is None:
                    raise MalformedCommitment("commitment is sealed (timelocked), not readable")
                buckets[record.uid] = parse_commitment(value)
            except (MalformedCommitment, ValueError, TypeError, KeyError) as exc:
                log.warning("uid %d: bucket commitment skipped: %s", record.uid, exc)
        return buckets

    async def commit_bucket(self, bucket: Bucket) -> bool:
        text = encode_bucket(bucket)

        async def commit(client: bt.Client) -> bool:
            current = await client.read("commitment", netuid=self.netuid, hotkey_ss58=self.hotkey)
            if current is not None and current.data == text:
                return False
            call = bt.calls.Commitments.set_commitment(
                netuid=self.netuid,
                info={"fields": [{f"Raw{len(text)}": text.encode("ascii")}]},
            )
            result = await client.submit_call(call, self._wallet, signer="hotkey")
            if not result.success:
                # The result's message and error name the failure; the call (and the secret
                # in it) is not part of them.
                raise bt.ChainError(f"set_commitment rejected: {result.message}")
            return True

        return await self._call("commit", commit)

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None:
        normalised_weights(uids, weights)  # refuse what the chain would, before a round trip
        intent = SetWeights(
            netuid=self.netuid,
            uids=[int(u) for u in uids],
            weights=[float(w) for w in weights],
        )

        async def submit(client: bt.Client) -> None:
            result = await client.execute(intent, self._wallet)
            if not result.success:
                raise bt.ChainError(f"set_weights rejected: {result.message}")

        await self._call("set weights", submit)
