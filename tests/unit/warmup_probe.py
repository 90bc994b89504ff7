"""Run in a fresh process by test_warmup.py: which kernel signatures do neurons compile that
the warm-up did not? Prints a JSON object {"made": ..., "windows": ..., "formats": ...},
each {kernel: [signatures compiled after the warm-up]} (empty when the warm-up covered all).

    python -m tests.unit.warmup_probe
"""

from __future__ import annotations

import asyncio
import json
import tempfile

from numba.core.dispatcher import Dispatcher

from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock
from adapters.signing import DevKeyVerifier, dev_signer
from adapters.storage.memory import MemoryStoreOpener
from core.compression import elias_fano, kernels, select
from core.decoding import Pool, Synchronous
from core.warmup import warm_up
from neurons.buckets import local_buckets
from neurons.config import NeuronSettings, hparams_from_mapping
from neurons.localnet import localnet_hparams
from neurons.miner import Miner
from neurons.validator import Validator

Signatures = dict[str, set[str]]


def signatures() -> Signatures:
    return {
        f"{module.__name__}.{name}": {str(s) for s in f.signatures}
        for module in (kernels, elias_fano, select)
        for name, f in vars(module).items()
        if isinstance(f, Dispatcher)
    }


def grown(before: Signatures) -> dict[str, list[str]]:
    after = signatures()
    new = {name: after[name] - before.get(name, set()) for name in after}
    return {name: sorted(sigs) for name, sigs in new.items() if sigs}


def network(bins: int, runner, state_dir: str):
    """A validator, two honest miners and a garbage miner on in-memory fakes; `runner()`
    makes each one's decode runner (None: the neuron picks its own)."""
    hparams = hparams_from_mapping({**localnet_hparams(0.5), "quantization_bins": bins})
    clock = FakeClock()
    chain = FakeNetwork.in_memory(clock, block_time=0.5)
    opener = MemoryStoreOpener(clock)
    chain.register("val", stake=100.0, validator_permit=True)
    neurons = []
    for kind, hotkey, faulty in (
        (Validator, "val", ""),
        (Miner, "m0", ""),
        (Miner, "m1", ""),
        (Miner, "bad", "garbage"),
    ):
        if hotkey != "val":
            chain.register(hotkey)
        settings = NeuronSettings(
            storage="memory",
            chain="memory",
            block_poll_interval=0.1,
            state_dir=state_dir,
            faulty=faulty,
        )
        neurons.append(
            kind(
                hparams,
                settings,
                chain=chain.chain(hotkey),
                opener=opener,
                clock=clock,
                buckets=local_buckets(hotkey, with_aggregator=hotkey == "val"),
                hotkey=hotkey,
                signer=dev_signer(hotkey),
                verifier=DevKeyVerifier(),
                runner=runner() if runner is not None else None,
                timestamp_resolution=0.0,
            )
        )
    return hparams, neurons


async def run(neurons, windows: int = 3) -> None:
    stop = asyncio.Event()
    await asyncio.gather(*(n.run(stop, max_windows=windows) for n in neurons))


async def main() -> dict[str, dict[str, list[str]]]:
    report = {}
    with tempfile.TemporaryDirectory() as state:
        # A neuron warms its format as it is made: a warm-up after that compiles nothing
        # more, and neither do its windows.
        hparams, neurons = network(hparams_from_mapping({}).quantization_bins, None, state)
        before = signatures()
        warm_up([hparams.topk_params()])
        report["made"] = grown(before)
        await run(neurons)
        report["windows"] = grown(before)
        # The full warm-up (make's install) covers every format, decoded in worker threads
        # and on the event loop.
        warm_up()
        before = signatures()
        for bins in (0, 2, 4, 16, 256):
            for runner in (Pool, Synchronous):
                await run(network(bins, runner, state)[1])
        report["formats"] = grown(before)
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
