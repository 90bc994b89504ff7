"""neurons.container: every Selector branch gives the adapter it names."""

from __future__ import annotations

import os
import sys

import pytest

from adapters.chain.fake import FakeChain, FileChain
from adapters.clock import FakeClock, SystemClock
from adapters.signing import Sr25519Signer
from adapters.storage.local import LocalStoreOpener
from adapters.storage.memory import MemoryStoreOpener
from adapters.storage.obstore_store import ObstoreStoreOpener
from adapters.storage.s3 import S3StoreOpener
from neurons.config import ConfigError, HParams, load_settings
from neurons.container import EndpointOpener, build_container
from tests.unit.test_neuron_config import r2_env


def container(tmp_path, validator=False, env=None, **flags):
    settings = load_settings(
        {},
        {"chain_path": str(tmp_path / "chain.json"), "storage_root": str(tmp_path / "s")}
        | {"state_dir": str(tmp_path / "state")}
        | flags,
    )
    return build_container(HParams(), settings, hotkey="hk", validator=validator, env=env)


@pytest.mark.parametrize(
    ("storage", "kind"), [("local", LocalStoreOpener), ("memory", MemoryStoreOpener)]
)
def test_storage_selector(tmp_path, storage, kind):
    c = container(tmp_path, storage=storage, chain="memory")
    assert isinstance(c.storage(), kind)
    assert c.storage() is c.storage()  # one opener per process


@pytest.mark.parametrize(("storage", "resolution"), [("r2", 1.0), ("local", 0.0), ("memory", 0.0)])
def test_timestamp_resolution_follows_the_storage(tmp_path, storage, resolution):
    env = r2_env() if storage == "r2" else None
    c = container(tmp_path, storage=storage, chain="memory", env=env)
    assert c.timestamp_resolution() == resolution


def test_r2_storage_and_endpoint(tmp_path):
    c = container(tmp_path, storage="r2", chain="memory", env=r2_env(), validator=True)
    assert isinstance(c.storage(), ObstoreStoreOpener)  # the default client
    assert c.buckets().aggregator_write is not None
    c = container(tmp_path, storage="r2", chain="memory", env=r2_env(), s3_endpoint="http://x:1")
    assert isinstance(c.storage(), EndpointOpener)
    assert c.buckets().gradients_read.endpoint_url == "http://x:1"
    # a miner reads the aggregator bucket (catch-up) only when it is configured
    assert c.buckets().aggregator_read is not None
    env = {k: v for k, v in r2_env().items() if not k.startswith("R2_AGGREGATOR")}
    c = container(tmp_path, storage="r2", chain="memory", env=env)
    assert c.buckets().aggregator_read is None


def test_s3_settings_reach_the_opener(tmp_path):
    c = container(tmp_path, storage="r2", chain="memory", env=r2_env(), storage_client="boto3")
    assert c.storage().settings.request_checksum_calculation == "when_required"  # R2-safe
    assert c.storage().settings.client_cache_size == 256
    env = {
        "TEMPLAR_S3_REQUEST_CHECKSUM_CALCULATION": "when_supported",
        "TEMPLAR_S3_CLIENT_CACHE_SIZE": "16",
        "TEMPLAR_STORAGE_CLIENT": "boto3",
    }
    settings = load_settings(env, {"chain": "memory", "state_dir": str(tmp_path / "state")})
    c = build_container(HParams(), settings, hotkey="hk", validator=False, env=r2_env())
    assert c.storage().settings.request_checksum_calculation == "when_supported"
    assert c.storage().settings.client_cache_size == 16
    with pytest.raises(ConfigError, match="s3_request_checksum_calculation"):
        load_settings({}, {"s3_request_checksum_calculation": "always"})


@pytest.mark.parametrize(("chain", "kind"), [("fake", FileChain), ("memory", FakeChain)])
def test_chain_selector(tmp_path, chain, kind):
    c = container(tmp_path, storage="memory", chain=chain)
    assert type(c.chain()) is kind
    assert c.chain().hotkey == "hk"


def test_bittensor_chain_branch(tmp_path, monkeypatch):
    made = {}

    class FakeWallet:
        def __init__(self, name, hotkey, path):
            made["wallet"] = (name, hotkey, path)
            self.hotkey = object()  # the hotkey keypair

    class FakeBittensorChain:
        def __init__(self, *, netuid, wallet, network, clock):
            made["chain"] = (netuid, network)

    import bittensor

    import adapters.chain.bittensor as bt_adapter

    monkeypatch.setattr(bittensor, "Wallet", FakeWallet)
    monkeypatch.setattr(bt_adapter, "BittensorChain", FakeBittensorChain)
    c = container(tmp_path, storage="memory", chain="bittensor", netuid=9, wallet_hotkey="h1")
    assert isinstance(c.chain(), FakeBittensorChain)
    wallets = os.path.expanduser("~/.bittensor/wallets")
    assert made == {"wallet": ("default", "h1", wallets), "chain": (9, "finney")}
    assert "bittensor" in sys.modules
    # payloads are signed with the same wallet's hotkey, and checked as sr25519
    assert c.signer().scheme == c.verifier().scheme == "sr25519"
    assert c.signer()._keypair is c.wallet().hotkey


@pytest.mark.parametrize("chain", ["fake", "memory"])
def test_fake_chains_sign_with_keys_derived_from_the_hotkey_name(tmp_path, chain):
    c = container(tmp_path, storage="memory", chain=chain)
    digest = bytes(32)
    signature = c.signer().sign(digest)
    assert c.verifier().verify(digest, signature, "hk")
    assert not c.verifier().verify(digest, signature, "another-hotkey")


def test_clock_is_the_system_clock_unless_overridden(tmp_path):
    c = container(tmp_path, storage="memory", chain="memory")
    assert isinstance(c.clock(), SystemClock)
    fake = FakeClock()
    c.clock.override(fake)
    assert c.clock() is fake


def test_local_buckets_commit_on_the_fake_chain(tmp_path):
    import asyncio

    c = container(tmp_path, storage="local", chain="memory", validator=True)
    c.memory_network().register("hk")
    assert asyncio.run(c.chain().commit_bucket(c.buckets().gradients_read)) is True


def test_a_bittensor_wallets_hotkey_signs_what_the_sr25519_verifier_accepts(tmp_path, monkeypatch):
    import bittensor

    real = bittensor.Wallet

    def wallet(name, hotkey, path):
        made = real(name=name, hotkey=hotkey, path=str(tmp_path / "wallets"))
        made.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
        return made

    monkeypatch.setattr(bittensor, "Wallet", wallet)
    c = container(tmp_path, storage="memory", chain="bittensor", wallet_hotkey="h1")
    digest = bytes(range(32))
    hotkey = c.wallet().hotkey.ss58_address
    assert c.verifier().verify(digest, c.signer().sign(digest), hotkey)
    bob = Sr25519Signer.from_uri("//Bob").hotkey
    assert not c.verifier().verify(digest, c.signer().sign(digest), bob)


def test_storage_client_selects_the_s3_opener(tmp_path):
    c = container(tmp_path, storage="r2", chain="memory", env=r2_env(), storage_client="obstore")
    assert isinstance(c.storage(), ObstoreStoreOpener)
    assert c.storage().settings.client_cache_size == 256
    env = {"TEMPLAR_S3_CLIENT_CACHE_SIZE": "16", "TEMPLAR_S3_ENDPOINT": "http://127.0.0.1:8333"}
    settings = load_settings(env, {"chain": "memory", "state_dir": str(tmp_path / "state")})
    c = build_container(HParams(), settings, hotkey="hk", validator=False, env=r2_env())
    assert isinstance(c.storage(), EndpointOpener)
    assert isinstance(c.storage()._inner, ObstoreStoreOpener)
    assert c.storage()._inner.settings.client_cache_size == 16
    c = container(tmp_path, storage="r2", chain="memory", env=r2_env(), storage_client="boto3")
    assert isinstance(c.storage(), S3StoreOpener)


@pytest.mark.parametrize(
    ("env", "flags", "named"),
    [
        ({"TEMPLAR_STORAGE_CLIENT": "aiobotocore"}, {}, "storage_client"),
        ({}, {"storage_client": "boto"}, "storage_client"),
        ({}, {"storage_client": "obstore", "s3_endpoint": "localhost:8333"}, "s3_endpoint"),
        ({"TEMPLAR_S3_ENDPOINT": "ftp://host"}, {"storage_client": "obstore"}, "s3_endpoint"),
        ({"TEMPLAR_S3_ENDPOINT": "localhost:8333"}, {}, "s3_endpoint"),  # obstore, the default
    ],
)
def test_a_misconfigured_storage_client_is_one_clear_error_at_start(env, flags, named):
    with pytest.raises(ConfigError, match=named) as info:
        load_settings(env, flags)
    assert info.value.key == named
