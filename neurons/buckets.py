"""A neuron's own buckets: from R2 environment variables, or made up for local networks.

On chain a bucket is committed as account id (the bucket name) + read key + read secret, in
fixed lengths (adapters/chain/commitment.py). A local or in-memory network has no real
credentials, so each neuron gets deterministic ones of the right shape, derived from its
hotkey: every process of a localnet computes the same names without talking to the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import attrs

from adapters.storage.r2_env import RoleBuckets
from ports import Bucket


@attrs.frozen
class NeuronBuckets:
    """Read and write credentials for our gradient bucket and (validators) aggregator bucket,
    and the read credentials of the dataset bucket the task reads (None: none configured)."""

    gradients_read: Bucket
    gradients_write: Bucket
    aggregator_read: Bucket | None = None
    aggregator_write: Bucket | None = None
    dataset_read: Bucket | None = None


def _hex(*parts: str, length: int) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def local_bucket(hotkey: str, role: str, access: str) -> Bucket:
    """A made-up bucket for `hotkey`'s `role`; read and write differ only in their keys."""
    account = _hex("account", role, hotkey, length=32)
    return Bucket(
        name=account,
        account_id=account,
        access_key_id=_hex("key", access, role, hotkey, length=32),
        secret_access_key=_hex("secret", access, role, hotkey, length=32) * 2,
    )


# A local network has one dataset bucket, shared by every neuron (the localnet fills it).
DATASET_OWNER = "network-dataset"


def local_dataset_bucket(access: str = "read") -> Bucket:
    return local_bucket(DATASET_OWNER, "dataset", access)


def local_buckets(hotkey: str, *, with_aggregator: bool = False) -> NeuronBuckets:
    def pair(role: str) -> tuple[Bucket, Bucket]:
        return local_bucket(hotkey, role, "read"), local_bucket(hotkey, role, "write")

    g_read, g_write = pair("gradients")
    a_read, a_write = pair("aggregator") if with_aggregator else (None, None)
    return NeuronBuckets(g_read, g_write, a_read, a_write, local_dataset_bucket())


def r2_neuron_buckets(roles: Mapping[str, RoleBuckets], endpoint: str = "") -> NeuronBuckets:
    """`NeuronBuckets` from `config.r2_buckets(...)`'s result (role -> RoleBuckets)."""

    def fix(bucket: Bucket | None) -> Bucket | None:
        if bucket is None or not endpoint:
            return bucket
        return attrs.evolve(bucket, endpoint=endpoint)

    gradients = roles["gradients"]
    if gradients.write is None:
        raise ValueError("R2_GRADIENTS_WRITE_ACCESS_KEY_ID and its secret are required")
    aggregator = roles.get("aggregator")  # a miner's has no write key
    dataset = roles.get("dataset")  # read only, whatever keys the environment holds
    return NeuronBuckets(
        gradients_read=fix(gradients.read),
        gradients_write=fix(gradients.write),
        aggregator_read=fix(aggregator.read) if aggregator else None,
        aggregator_write=fix(aggregator.write) if aggregator else None,
        dataset_read=fix(dataset.read) if dataset else None,
    )
