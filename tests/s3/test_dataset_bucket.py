"""The dataset bucket on an S3 service that checks keys as R2 does: probed at start with its
read key, and the lm task's pages read through it."""

from __future__ import annotations

import secrets

import attrs
import pytest

from adapters.storage.s3 import S3Settings, S3StoreOpener
from neurons import preflight
from neurons.buckets import r2_neuron_buckets
from neurons.config import NeuronSettings, hparams_from_mapping, r2_buckets
from neurons.task import ReadOnlyStore, TaskContext, load_task
from neurons.tasks import corpus
from tests.s3.test_cli_errors import Keys, served  # noqa: F401

pytestmark = pytest.mark.s3


def dataset_env(keys: Keys) -> dict[str, str]:
    """The served bucket as both the gradient bucket and, read only, the dataset bucket."""
    env = keys.env()
    for name, value in list(env.items()):
        if "_WRITE_" not in name:
            env[name.replace("R2_GRADIENTS_", "R2_DATASET_")] = value
    return env


async def test_a_refused_dataset_key_is_named_at_start(served) -> None:  # noqa: F811
    server, keys = served
    settings = NeuronSettings(storage="r2", s3_endpoint=server.endpoint)
    found = r2_buckets(dataset_env(keys), ("gradients", "dataset"), writable=("gradients",))
    buckets = r2_neuron_buckets(found, server.endpoint)
    assert buckets.dataset_read is not None
    assert buckets.dataset_read.access_key_id == keys.read.access_key_id
    opener = S3StoreOpener(S3Settings())
    try:
        await preflight.r2_reachable(opener, buckets, settings)
        wrong = attrs.evolve(buckets.dataset_read, secret_access_key=secrets.token_hex(32))
        with pytest.raises(preflight.SetupError, match="R2_DATASET_READ_"):
            await preflight.r2_reachable(
                opener, attrs.evolve(buckets, dataset_read=wrong), settings
            )
    finally:
        opener.close()


async def test_the_lm_task_reads_its_pages_with_the_read_key(served) -> None:  # noqa: F811
    server, keys = served
    found = r2_buckets(dataset_env(keys), ("gradients", "dataset"), writable=("gradients",))
    buckets = r2_neuron_buckets(found, server.endpoint)
    opener = S3StoreOpener(S3Settings())
    try:
        await corpus.upload_corpus(opener.open(buckets.gradients_write), count=corpus.PAGES)
        assert buckets.dataset_read is not None
        dataset = ReadOnlyStore(opener, buckets.dataset_read)
        hp = hparams_from_mapping({"task": "lm", "batch_size": 2})
        task = load_task(TaskContext(hparams=hp, dataset=dataset)).task
        assert len(await task.train_batches(1, 3, 2)) == 2
        assert len(await task.eval_batches(3, 2)) == 2
        assert not hasattr(dataset, "put") and not hasattr(dataset, "delete")
    finally:
        opener.close()
