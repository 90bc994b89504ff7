"""An in-memory subtensor behind the bittensor SDK's own seam, `bittensor.Substrate`.

`FakeSubtensor` is the node: one subnet's neurons, commitments and weights, blocks from a
`FakeClock`. Each `substrate()` is one connection to it, implementing only the `Substrate`
methods the SDK reaches on the paths `BittensorChain` uses, and returning values in the shape
the SDK's RPC backend decodes them to (hotkey-keyed maps, `{"Raw<n>": "0x..."}` commitment
fields, u16 incentives, rao stakes). `fail_next(n)` makes the next n requests fail as a
dropped connection would, to exercise retries and reconnection.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import bittensor as bt
from bittensor.keyfiles import Keypair

from adapters.clock import FakeClock

U16_MAX = 65535
RAO_PER_TAO = 10**9
FINALITY_LAG = 2


class FakeSubtensor:
    def __init__(
        self,
        clock: FakeClock,
        *,
        netuid: int = 3,
        block_time: float = 12.0,
        genesis_time: datetime | None = None,
    ) -> None:
        self.clock = clock
        self.netuid = netuid
        self.block_time = block_time
        self.genesis_time = genesis_time or clock.now()
        self.neurons: list[dict[str, Any]] = []
        self.commitments: dict[str, dict[str, Any]] = {}
        self.weight_rows: dict[str, tuple[list[int], list[int]]] = {}
        self.keypairs: dict[str, Keypair] = {}
        self.storage: dict[tuple[str, str, tuple], Any] = {}
        self.failures = 0
        self.connections = 0
        self.submitted: list[tuple[str, str]] = []

    # The node's own state --------------------------------------------------------------

    def head(self) -> int:
        elapsed = (self.clock.now() - self.genesis_time).total_seconds()
        # Starts a few blocks in, so the finalised block is never negative.
        return FINALITY_LAG + max(0, math.floor(elapsed / self.block_time))

    def timestamp_ms(self, block: int) -> int:
        seconds = self.genesis_time.timestamp() + (block - FINALITY_LAG) * self.block_time
        return round(seconds * 1000)

    def uid(self, hotkey: str) -> int | None:
        for uid, neuron in enumerate(self.neurons):
            if neuron["hotkey"] == hotkey:
                return uid
        return None

    def fail_next(self, count: int) -> None:
        self.failures += count

    def substrate(self) -> FakeSubstrate:
        self.connections += 1
        return FakeSubstrate(self)

    # Network admin (the contract suite's helper) -----------------------------------------

    def new_hotkey(self, name: str) -> str:
        keypair = Keypair.create_from_uri(f"//{name}")
        self.keypairs[keypair.ss58_address] = keypair
        return keypair.ss58_address

    def wallet(self, hotkey: str) -> FakeWallet:
        return FakeWallet(self.keypairs[hotkey])

    def register(
        self,
        hotkey: str,
        *,
        stake: float = 0.0,
        incentive: float = 0.0,
        validator_permit: bool = False,
    ) -> int:
        uid = self.uid(hotkey)
        if uid is not None:
            return uid
        self.neurons.append({"hotkey": hotkey, "stake": 0, "incentive": 0, "permit": False})
        self.set_stake(hotkey, stake)
        self.set_incentive(hotkey, incentive)
        self.set_validator_permit(hotkey, validator_permit)
        return len(self.neurons) - 1

    def _neuron(self, hotkey: str) -> dict[str, Any]:
        uid = self.uid(hotkey)
        if uid is None:
            raise KeyError(hotkey)
        return self.neurons[uid]

    def set_stake(self, hotkey: str, stake: float) -> None:
        self._neuron(hotkey)["stake"] = round(stake * RAO_PER_TAO)

    def set_incentive(self, hotkey: str, incentive: float) -> None:
        self._neuron(hotkey)["incentive"] = round(incentive * U16_MAX)

    def set_validator_permit(self, hotkey: str, permit: bool) -> None:
        self._neuron(hotkey)["permit"] = permit

    def write_raw_commitment(self, hotkey: str, text: str | bytes) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.write_fields(hotkey, [{f"Raw{len(data)}": "0x" + data.hex()}])

    def write_fields(self, hotkey: str, fields: list[Any]) -> None:
        record = {"block": self.head(), "deposit": 0, "info": {"fields": fields}}
        self.commitments[hotkey] = record

    def weights(self, hotkey: str) -> dict[int, float]:
        uids, values = self.weight_rows.get(hotkey, ([], []))
        total = sum(values)
        return {u: v / total for u, v in zip(uids, values, strict=True)} if total else {}

    # What a connection reads -----------------------------------------------------------

    def metagraph(self, netuid: int) -> dict[str, Any] | None:
        if netuid != self.netuid:
            return None
        column = self.neurons
        return {
            "netuid": netuid,
            "block": self.head(),
            "tempo": 360,
            "last_step": 0,
            "blocks_since_last_step": 0,
            "owner_hotkey": "owner-hotkey",
            "owner_coldkey": "owner-coldkey",
            "network_registered_at": 0,
            "num_uids": len(column),
            "max_uids": 256,
            "hotkeys": [n["hotkey"] for n in column],
            "coldkeys": [f"cold-{n['hotkey']}" for n in column],
            "active": [True for _ in column],
            "validator_permit": [n["permit"] for n in column],
            "incentives": [n["incentive"] for n in column],
            "total_stake": [n["stake"] for n in column],
            "alpha_stake": [n["stake"] for n in column],
            "tao_stake": [0 for _ in column],
        }

    def query(self, module: str, name: str, params: list, block: int) -> Any:
        params = list(params or [])
        if (module, name) == ("Timestamp", "Now"):
            return self.timestamp_ms(block)
        if (module, name) == ("SubtensorModule", "Uids") and params[0] == self.netuid:
            return self.uid(params[1])
        if (module, name) == ("Commitments", "CommitmentOf") and params[0] == self.netuid:
            return self.commitments.get(params[1])
        return self.storage.get((module, name, tuple(params)))

    def query_map(self, module: str, name: str, params: list) -> list[tuple[Any, Any]]:
        if list(params or []) != [self.netuid]:
            return []
        if (module, name) == ("Commitments", "CommitmentOf"):
            return list(self.commitments.items())
        if (module, name) == ("SubtensorModule", "Uids"):
            return [(n["hotkey"], uid) for uid, n in enumerate(self.neurons)]
        return []

    def submit(self, call: Any, signer: str) -> bt.ExtrinsicResult:
        module, function, params = call
        self.submitted.append((module, function))
        if self.uid(signer) is None:
            return _failed("HotKeyNotRegisteredInNetwork")
        if (module, function) == ("Commitments", "set_commitment"):
            fields = [
                {variant: "0x" + bytes(value).hex() for variant, value in entry.items()}
                for entry in params["info"]["fields"]
            ]
            self.write_fields(signer, fields)
        elif (module, function) == ("SubtensorModule", "set_mechanism_weights"):
            if any(uid >= len(self.neurons) for uid in params["dests"]):
                return _failed("UidVecContainInvalidOne")
            self.weight_rows[signer] = (list(params["dests"]), list(params["weights"]))
        else:
            return _failed(f"the fake chain does not support {module}.{function}")
        return bt.ExtrinsicResult(success=True, message="included", block_hash=_hash(self.head()))


def _failed(name: str) -> bt.ExtrinsicResult:
    return bt.ExtrinsicResult(success=False, message=name, error=bt.ChainError(name, name=name))


def _hash(block: int) -> str:
    return f"0x{block:064x}"


class FakeWallet:
    """Wallet-shaped (coldkey, coldkeypub, hotkey), as the SDK's `KeyedWallet` protocol asks."""

    def __init__(self, hotkey: Keypair) -> None:
        self.hotkey = hotkey
        self.hotkeypub = hotkey
        self.coldkey = hotkey
        self.coldkeypub = hotkey


class FakeSubstrate:
    """One connection to a `FakeSubtensor`; closed connections refuse work like the SDK's."""

    def __init__(self, node: FakeSubtensor) -> None:
        self.node = node
        self.token_symbols: dict[int, str] = {}
        self.open = False

    def _request(self) -> None:
        if not self.open:
            raise bt.ConnectionNotReady("connection is not open")
        if self.node.failures:
            self.node.failures -= 1
            self.open = False
            raise bt.RpcConnectionError("connection closed by the fake node")

    def _block(self, block_hash: str | None) -> int:
        return self.node.head() if block_hash is None else int(block_hash, 16)

    def balance(self, rao: int, netuid: int = 0) -> bt.Balance:
        return bt.Balance(int(rao), netuid, None)

    async def connect(self) -> None:
        if self.node.failures:
            self.node.failures -= 1
            raise bt.RpcConnectionError("the fake node refused the connection")
        self.open = True

    async def close(self) -> None:
        self.open = False

    async def block_hash(self, block: int | None = None) -> str:
        self._request()
        return _hash(self.node.head() if block is None else block)

    async def block_number(self) -> int:
        self._request()
        return self.node.head()

    async def finalized_block_number(self) -> int:
        self._request()
        return self.node.head() - FINALITY_LAG

    async def block_time(self) -> float:
        return self.node.block_time

    async def query(self, module, storage_function, params=None, block_hash=None) -> Any:
        self._request()
        return self.node.query(module, storage_function, params, self._block(block_hash))

    async def query_map(self, module, storage_function, params=None, block_hash=None) -> list:
        self._request()
        return self.node.query_map(module, storage_function, params)

    async def runtime_call(self, api, method, params, block_hash=None) -> Any:
        self._request()
        if (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph"):
            return self.node.metagraph(params[0])
        raise bt.ChainError(f"the fake node has no runtime API {api}.{method}")

    async def compose(self, call) -> Any:
        self._request()
        return call

    async def estimate_fee(self, call, keypair) -> bt.Balance:
        self._request()
        return bt.Balance(0)

    async def submit(self, call, keypair, **_options: Any) -> bt.ExtrinsicResult:
        self._request()
        return self.node.submit(call, keypair.ss58_address)
