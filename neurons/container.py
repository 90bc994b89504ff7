"""The composition root: the only module that knows which adapter implements which port.

`Container` is a dependency-injector container. `storage` (r2 | local | memory) and `chain`
(bittensor | fake | memory) are `providers.Selector`s keyed by the neuron settings, and
`protocol` (native | templar: core/profiles.py) by the `protocol` hparam; tests override
`clock` with a `FakeClock` and may override anything else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
from dependency_injector import containers, providers

from adapters.chain.fake import FakeNetwork, FileChain
from adapters.clock import SystemClock
from adapters.scratch import TempScratch
from adapters.signing import DevKeyVerifier, Sr25519Signer, Sr25519Verifier, dev_signer
from adapters.storage.local import LocalStore, LocalStoreOpener
from adapters.storage.memory import MemoryStoreOpener
from adapters.storage.obstore_store import ObstoreSettings, ObstoreStoreOpener
from adapters.storage.s3 import S3StoreOpener
from adapters.storage.s3_client import S3Settings
from core.profiles import ProtocolProfile, profile
from neurons.buckets import NeuronBuckets, local_buckets, r2_neuron_buckets
from neurons.config import HParams, NeuronSettings, r2_buckets
from ports import Bucket, Chain, Clock, ObjectStore, StoreOpener
from ports.signing import Signer, Verifier


class EndpointOpener:
    """Opens every bucket at one S3 endpoint.

    Commitments carry no endpoint (readers derive R2's from the account id), so a network on
    another S3 service (the localnet on SeaweedFS) points every peer's bucket at it here.
    """

    def __init__(self, inner: StoreOpener, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint

    def open(self, bucket: Bucket) -> ObjectStore:
        return self._inner.open(attrs.evolve(bucket, endpoint=self._endpoint))

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _s3_opener(
    endpoint: str, concurrency: int, checksums: str, cache_size: int, client: str = "boto3"
) -> StoreOpener:
    opener: StoreOpener
    if client == "obstore":
        opener = ObstoreStoreOpener(ObstoreSettings(client_cache_size=cache_size))
    else:
        settings = S3Settings(
            max_pool_connections=max(concurrency, 10),
            request_checksum_calculation=checksums,
            client_cache_size=cache_size,
        )
        opener = S3StoreOpener(settings)
    return EndpointOpener(opener, endpoint) if endpoint else opener


def _wallet(wallet_name: str, wallet_hotkey: str, wallet_path: str) -> Any:
    # bittensor is an optional extra: imported only when a real chain is asked for.
    import bittensor as bt

    return bt.Wallet(name=wallet_name, hotkey=wallet_hotkey, path=os.path.expanduser(wallet_path))


def _bittensor_chain(netuid: int, network: str, wallet: Any, clock: Clock) -> Chain:
    from adapters.chain.bittensor import BittensorChain

    # Retries back off on the injected clock, so tests of an unreachable chain never wait.
    return BittensorChain(netuid=netuid, wallet=wallet, network=network, clock=clock)


def _memory_chain(network: FakeNetwork, hotkey: str) -> Chain:
    return network.chain(hotkey)


def _buckets(
    storage: str, hotkey: str, env: Mapping[str, str], endpoint: str, validator: bool
) -> NeuronBuckets:
    if storage == "r2":
        # Miners read the aggregator bucket (for catch-up) when it is configured.
        wanted = validator or bool(env.get("R2_AGGREGATOR_ACCOUNT_ID"))
        roles = ("gradients", "aggregator") if wanted else ("gradients",)
        # A validator publishes aggregates, so it needs the aggregator's write key too.
        writable = roles if validator else ("gradients",)
        # The dataset bucket (the task's pages), read only, when it is configured.
        if env.get("R2_DATASET_ACCOUNT_ID"):
            roles = (*roles, "dataset")
        neuron = "validator" if validator else "miner"
        found = r2_buckets(env, roles, writable=writable, neuron=neuron)
        return r2_neuron_buckets(found, endpoint)
    return local_buckets(hotkey, with_aggregator=validator)


class Container(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)
    env = providers.Object(os.environ)

    clock: providers.Provider[Clock] = providers.Singleton(SystemClock)

    storage: providers.Provider[StoreOpener] = providers.Selector(
        config.storage,
        r2=providers.Singleton(
            _s3_opener,
            config.s3_endpoint,
            config.gather_concurrency,
            config.s3_request_checksum_calculation,
            config.s3_client_cache_size,
            config.storage_client,
        ),
        local=providers.Singleton(
            LocalStoreOpener,
            config.storage_root,
            clock=clock,
            direct_bytes=config.storage_direct_bytes,
        ),
        memory=providers.Singleton(MemoryStoreOpener, clock),
    )

    # The protocol profile: object names, peer-list and start-window bodies, time windows.
    protocol: providers.Provider[ProtocolProfile] = providers.Singleton(profile, config.protocol)

    # Seconds a store rounds last_modified down to (core/windows.py): S3 and R2 keep whole
    # seconds; files and memory keep exact times.
    store_timestamp_resolution: providers.Provider[float] = providers.Selector(
        config.storage,
        r2=providers.Object(1.0),
        local=providers.Object(0.0),
        memory=providers.Object(0.0),
    )
    # What the time-window check counts of it: the templar profile judges the stamp the store
    # reports, as Templar's validators do.
    timestamp_resolution: providers.Provider[float] = providers.Callable(
        lambda protocol, resolution: protocol.timestamp_resolution(resolution),
        protocol,
        store_timestamp_resolution,
    )

    memory_network = providers.Singleton(
        FakeNetwork.in_memory,
        clock,
        block_time=config.block_time,
        finality_lag=config.finality_lag,
    )
    wallet = providers.Singleton(
        _wallet, config.wallet_name, config.wallet_hotkey, config.wallet_path
    )
    chain: providers.Provider[Chain] = providers.Selector(
        config.chain,
        bittensor=providers.Singleton(
            _bittensor_chain, config.netuid, config.network, wallet, clock
        ),
        fake=providers.Singleton(
            FileChain,
            config.chain_path,
            config.hotkey,
            clock=clock,
            block_time=config.block_time,
            finality_lag=config.finality_lag,
        ),
        memory=providers.Singleton(_memory_chain, memory_network, config.hotkey),
    )

    # Payloads are signed by the uploader's hotkey and checked against the hotkey the chain
    # lists for its uid: sr25519 with the wallet's hotkey on Bittensor; on the fake chains,
    # whose hotkeys are bare names, HMAC with keys derived from those names (no secrecy:
    # it exercises the path, see adapters/signing.py).
    signer: providers.Provider[Signer] = providers.Selector(
        config.chain,
        bittensor=providers.Singleton(Sr25519Signer.from_wallet, wallet),
        fake=providers.Singleton(dev_signer, config.hotkey),
        memory=providers.Singleton(dev_signer, config.hotkey),
    )
    verifier: providers.Provider[Verifier] = providers.Selector(
        config.chain,
        bittensor=providers.Singleton(Sr25519Verifier),
        fake=providers.Singleton(DevKeyVerifier),
        memory=providers.Singleton(DevKeyVerifier),
    )

    buckets: providers.Provider[NeuronBuckets] = providers.Singleton(
        _buckets, config.storage, config.hotkey, env, config.s3_endpoint, config.validator
    )

    scratch = providers.Singleton(TempScratch, config.scratch_dir)
    # The neuron's own directory bucket (the seed's local storage), beside its scratch files.
    local_store: providers.Provider[ObjectStore] = providers.Singleton(
        LocalStore, config.local_dir, clock=clock
    )

    # Threads that decode peers' payloads: one per core, more only thrash (docs/gather.md).
    decode_workers: providers.Provider[int] = providers.Object(max(1, os.cpu_count() or 1))


def build_container(
    hparams: HParams,
    settings: NeuronSettings,
    *,
    hotkey: str,
    validator: bool,
    env: Mapping[str, str] | None = None,
) -> Container:
    """A container configured for one neuron (`env`: where R2 variables are read)."""
    container = Container()
    if env is not None:
        container.env.override(providers.Object(env))
    values = attrs.asdict(settings)
    values.update(
        hotkey=hotkey,
        validator=validator,
        gather_concurrency=hparams.gather_concurrency,
        protocol=hparams.protocol,
        scratch_dir=os.path.join(settings.state_dir, "scratch"),
        local_dir=os.path.join(settings.state_dir, "local"),
    )
    container.config.from_dict(values)
    return container
