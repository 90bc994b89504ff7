"""A hypothesis state machine: random mixes of peer behaviours, gathered and checked."""

from __future__ import annotations

import asyncio

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from adapters.clock import FakeClock
from adapters.storage.chaos import NO_FAULT, ChaosOpener, Fault
from adapters.storage.memory import MemoryStoreOpener
from core.aggregate import Normalisation
from core.codec import Expected
from core.decoding import Synchronous
from core.exchange import Exchange, ExchangeSettings
from core.fetch import FetchSettings
from core.gather import GatherSettings, gather
from core.windows import TimeWindow
from tests.unit.test_gather import COMP, SHAPES, V, W, bucket, payload, reference

BEHAVIOURS = ["ok", "missing", "early", "late", "garbage", "replayed", "slow", "oversized"]
EXPECTED_STATUS = {
    "missing": "not_found",
    "early": "too_early",
    "late": "too_late",
    "garbage": "invalid",
    "replayed": "invalid",
    "slow": "error",
    "oversized": "invalid",
}


class GatherMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.behaviour: dict[int, str] = {}
        self.mode = Normalisation.UNIT

    @rule(behaviour=st.sampled_from(BEHAVIOURS))
    def add_peer(self, behaviour: str) -> None:
        self.behaviour[len(self.behaviour) + 1] = behaviour

    @rule(mode=st.sampled_from(list(Normalisation)))
    def switch_normalisation(self, mode: Normalisation) -> None:
        self.mode = mode

    @precondition(lambda self: self.behaviour)
    @rule(data=st.data())
    def gather_and_check(self, data) -> None:
        uids = list(self.behaviour)
        primaries = data.draw(st.lists(st.sampled_from(uids), min_size=1, unique=True))
        reserves = [u for u in uids if u not in primaries]
        asyncio.run(self.check(primaries, reserves))

    async def check(self, primaries: list[int], reserves: list[int]) -> None:
        clock = FakeClock()
        base = MemoryStoreOpener(clock)
        slow = {u for u, b in self.behaviour.items() if b == "slow"}

        def faults(name: str, op: str, key: str) -> Fault:
            return Fault(latency=1000.0) if int(name.split("-")[1]) in slow else NO_FAULT

        me = Exchange(
            base.open(bucket(0)),
            ChaosOpener(base, clock, faults),
            clock,
            V,
            ExchangeSettings(timestamp_resolution=0),
        )

        async def put(uid: int, data: bytes) -> None:
            await base.open(bucket(uid)).put(f"gradient-{W}-{uid}-v{V}.safetensors", data)

        by = self.behaviour
        for uid in (u for u, b in by.items() if b == "early"):
            await put(uid, payload(uid))
        clock.advance(1)
        tw = TimeWindow.after(clock.now(), 10)
        for uid, b in by.items():
            if b in ("ok", "slow"):
                await put(uid, payload(uid))
            elif b == "garbage":
                await put(uid, bytes(range(256)) * 3)
            elif b == "replayed":
                await put(uid, payload(uid, window=W - 1))
            elif b == "oversized":
                await put(uid, b"\0" * 10_000_000)
        clock.advance(11)
        for uid in (u for u, b in by.items() if b == "late"):
            await put(uid, payload(uid))
        result = await gather(
            me,
            {u: bucket(u) for u in by},
            primaries,
            W,
            Expected(version=V, codec=COMP, shapes=SHAPES),
            reserve_uids=reserves,
            time_window=tw,
            settings=GatherSettings(
                normalisation=self.mode, fetch=FetchSettings(timeout=60, peer_timeout=20)
            ),
            runner=Synchronous(),
        )
        good = list(result.uids)
        assert all(by[u] == "ok" for u in good)
        assert len(good) <= len(primaries)
        tried = set(good) | set(result.skipped)
        assert set(primaries) <= tried
        oks = [u for u in primaries + reserves if by[u] == "ok"]
        if not slow:  # a slow peer spends deadline time, so later reserves may get none left
            assert len(good) == min(len(primaries), len(oks))  # reserves fill every gap
        else:
            assert len(good) <= min(len(primaries), len(oks))
        for uid, reason in result.skipped.items():
            assert reason.split(":")[0] == EXPECTED_STATUS[by[uid]], (by[uid], reason)
        assert result.success_rate == len(good) / len(primaries)
        if good:
            ref = reference(sorted(good), self.mode)
            for name in SHAPES:
                torch.testing.assert_close(result.aggregate[name], ref[name], rtol=1e-5, atol=1e-6)
        else:
            assert result.aggregate is None


GatherMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=12, deadline=None)
TestGatherMachine = GatherMachine.TestCase
