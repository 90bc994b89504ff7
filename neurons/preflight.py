"""What a neuron checks before it creates anything or starts its loop.

Each mistake an operator can make in setting a neuron up (no wallet, a hotkey not on the
subnet, a chain that cannot be reached, missing or wrong R2 credentials, a block time that
disagrees with the fake chain's file) is a `SetupError`: one line that says what is wrong and
what to do, which the CLI prints and exits with 2 (docs/configuration.md, "Errors"). The
checks run in the order a neuron would meet the problems, and before the neuron makes its
state and scratch directories, its events file or a fake chain file, so a run that fails
on configuration leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Collection, Iterator
from typing import Any

import attrs

from adapters.chain.commitment import MalformedCommitment, encode_bucket
from adapters.chain.fake import stored_block_time
from neurons.buckets import NeuronBuckets
from neurons.config import ConfigError, NeuronSettings
from ports import (
    AccessDenied,
    Bucket,
    Chain,
    ChainError,
    NotFound,
    StorageError,
    StoreOpener,
    TransientStorageError,
)

# Where an operator reads on; every fix below points here or names the command to run.
DOCS = "docs/operations.md"


class SetupError(ConfigError):
    """A setup mistake: `key` is what to look at, the message the problem and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(key, f"{_one_line(problem)}; {fix}")


def _one_line(text: str) -> str:
    # SDK and botocore messages may hold newlines; an operator's error is one line.
    return " ".join(str(text).split())


def fake_chain_settings(settings: NeuronSettings, explicit: Collection[str]) -> NeuronSettings:
    """`settings` with the fake chain file's block time, checked against the one asked for.

    Every process on one fake chain must count blocks alike, so the file's block time wins;
    one given explicitly (`explicit` holds the names of settings the operator set) that
    differs is a mistake, not something to ignore. No file yet means no hotkey is registered.
    """
    if settings.chain != "fake":
        return settings
    path = settings.chain_path
    try:
        stored = stored_block_time(path)
    except ValueError as exc:
        raise SetupError(
            "chain_path", str(exc), "point --chain-path at the file the fake chain was made in"
        ) from None
    if stored is None:
        raise SetupError(
            "chain_path",
            f"no fake chain at {path}, so hotkey {settings.hotkey} is not registered",
            "make the chain and register the hotkey first "
            f"(see {DOCS}), or point --chain-path at an existing chain file",
        )
    if "block_time" in explicit and not math.isclose(settings.block_time, stored):
        raise SetupError(
            "block_time",
            f"--block-time {settings.block_time:g} disagrees with the fake chain at {path} "
            f"({stored:g} s per block)",
            f"drop --block-time (the file's is used) or pass --block-time {stored:g}",
        )
    return attrs.evolve(settings, block_time=stored)


def r2_commitment(buckets: NeuronBuckets) -> None:
    """The gradient bucket's read key goes on chain in fixed lengths; refuse it here, by
    variable name, rather than after the neuron has started."""
    try:
        encode_bucket(buckets.gradients_read)
    except (MalformedCommitment, ValueError) as exc:
        raise SetupError(
            "R2_GRADIENTS_*",
            f"the gradient bucket cannot be committed on chain: {exc}",
            "R2 issues 32-character account ids and access key ids and 64-character "
            "secrets, and R2_GRADIENTS_BUCKET_NAME must equal R2_GRADIENTS_ACCOUNT_ID",
        ) from exc


def open_chain(container: Any, settings: NeuronSettings) -> Chain:
    """The container's chain; a missing bittensor SDK or wallet file is a SetupError."""
    if settings.chain != "bittensor":
        return container.chain()
    try:
        return container.chain()
    except ImportError:
        raise SetupError(
            "chain",
            "the bittensor chain needs the bittensor SDK, which is not installed",
            "pip install 'templar-comms[chain]', or use --chain fake",
        ) from None
    except (OSError, ValueError) as exc:  # the SDK's keyfile errors are OSErrors
        raise SetupError(
            "wallet",
            f"cannot read the hotkey {settings.wallet_hotkey!r} of wallet "
            f"{settings.wallet_name!r}: {exc}",
            f"create it with `btcli wallet new_hotkey --wallet.name {settings.wallet_name} "
            f"--wallet.hotkey {settings.wallet_hotkey}`, or point --wallet-name, "
            "--wallet-hotkey and --wallet-path at the wallet you have",
        ) from exc


@contextlib.contextmanager
def _retries_summed_up() -> Iterator[None]:
    """The bittensor adapter warns at each failed attempt; at start the one line that ends the
    run says how many failed, so those warnings would only repeat it (DEBUG keeps them)."""
    logger = logging.getLogger("adapters.chain.bittensor")
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


async def registered(chain: Chain, hotkey: str, settings: NeuronSettings) -> None:
    """The chain answers and lists `hotkey` on the subnet."""
    try:
        with _retries_summed_up():
            metagraph = await chain.metagraph()
    except ChainError as exc:
        where = settings.network if settings.chain == "bittensor" else settings.chain_path
        raise SetupError(
            "chain",
            f"cannot reach the chain ({where}): {exc}",
            "check --network and this machine's connection to it",
        ) from exc
    if metagraph.uid(hotkey) is not None:
        return
    if settings.chain == "bittensor":
        fix = (
            f"register it with `btcli subnet register --netuid {settings.netuid} "
            f"--wallet.name {settings.wallet_name} --wallet.hotkey {settings.wallet_hotkey}`, "
            "or check --netuid, --network and the wallet"
        )
        where = f"subnet {settings.netuid} of {settings.network}"
    else:
        fix = f"register it on the fake chain first (see {DOCS}), or check --hotkey"
        where = f"the fake chain at {settings.chain_path}"
    raise SetupError("hotkey", f"hotkey {hotkey} is not registered on {where}", fix)


async def release(chain: Chain, opener: StoreOpener | None) -> None:
    """Close what the checks opened, so a failed start leaves no connection to warn about."""
    close = getattr(chain, "close", None)
    if close is not None:
        await close()
    close = getattr(opener, "close", None)
    if close is not None:
        close()


def _buckets_to_probe(buckets: NeuronBuckets) -> list[tuple[str, str, Bucket]]:
    named = [
        ("GRADIENTS", "READ", buckets.gradients_read),
        ("GRADIENTS", "WRITE", buckets.gradients_write),
        ("AGGREGATOR", "READ", buckets.aggregator_read),
        ("AGGREGATOR", "WRITE", buckets.aggregator_write),
        ("DATASET", "READ", buckets.dataset_read),
    ]
    return [(role, access, bucket) for role, access, bucket in named if bucket is not None]


async def r2_reachable(
    opener: StoreOpener, buckets: NeuronBuckets, settings: NeuronSettings
) -> None:
    """Each R2 bucket answers a listing with its key: a wrong secret, endpoint or bucket name
    is found now, not as a failed upload every window."""
    if settings.storage != "r2":
        return
    for role, access, bucket in _buckets_to_probe(buckets):
        store = opener.open(bucket)
        keys = f"R2_{role}_{access}_ACCESS_KEY_ID and R2_{role}_{access}_SECRET_ACCESS_KEY"
        try:
            async for _ in store.list("templar-preflight/"):
                break
        except AccessDenied as exc:
            raise SetupError(
                f"R2_{role}_{access}_*", f"the {access.lower()} key was refused: {exc}",
                f"check {keys}",
            ) from exc  # fmt: skip
        except TransientStorageError as exc:
            if settings.s3_endpoint:
                fix = "check --s3-endpoint and that the S3 service there is up"
            elif bucket.endpoint:
                fix = f"check R2_{role}_ENDPOINT and that the S3 service there is up"
            else:
                fix = f"check R2_{role}_ACCOUNT_ID (R2's endpoint is made from it) and this "
                fix += "machine's connection"
            raise SetupError(
                f"R2_{role}_*",
                f"cannot reach the bucket's endpoint {bucket.endpoint_url}: {exc}",
                fix,
            ) from exc
        except (NotFound, StorageError) as exc:
            raise SetupError(
                f"R2_{role}_*",
                f"bucket {bucket.name} at {bucket.endpoint_url}: {exc}",
                f"check R2_{role}_BUCKET_NAME and R2_{role}_ACCOUNT_ID",
            ) from exc
        finally:
            await store.close()
