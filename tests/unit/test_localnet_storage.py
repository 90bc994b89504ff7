"""The S3 localnet's wiring, without starting anything: keys in the environment, never argv."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.chain.commitment import encode_bucket
from adapters.storage.local import LocalStoreOpener
from adapters.storage.r2_env import buckets_from_env
from neurons.buckets import local_dataset_bucket
from neurons.config import ConfigError
from neurons.localnet import (
    TASK_HPARAMS,
    LocalnetOptions,
    Spec,
    command,
    fill_dataset,
    prepare,
    whole_second_blocks,
)
from neurons.localnet_storage import LocalDirectories, SeaweedBuckets, neuron_environment
from neurons.tasks import corpus

SPECS = [Spec("validator", "validator-0"), Spec("miner", "miner-1"), Spec("miner", "miner-2")]


@pytest.fixture
def buckets(tmp_path: Path):
    made = SeaweedBuckets("/nonexistent/weed", SPECS)  # never started
    yield made
    made.server.destroy()


def test_each_neuron_gets_its_own_committable_buckets_through_the_environment(
    buckets, tmp_path
) -> None:
    names = set()
    datasets = []
    for spec in SPECS:
        env = buckets.env(spec)
        roles = ("gradients", "aggregator") if spec.role == "validator" else ("gradients",)
        assert {k.split("_")[1].lower() for k in env} == {*roles, "dataset"}
        # The network's one dataset bucket, with its read key only.
        dataset = {k: v for k, v in env.items() if k.startswith("R2_DATASET_")}
        assert not any("_WRITE_" in k for k in dataset)
        datasets.append(dataset)
        for found in buckets_from_env(env, roles).values():
            encode_bucket(found.read)  # the lengths a commitment needs
            assert found.read.access_key_id != found.write.access_key_id
            names.add(found.read.name)
        argv = " ".join(command(tmp_path, spec, 0.5, buckets))
        assert "--storage r2 --s3-endpoint http://127.0.0.1:" in argv
        assert not any(value in argv for value in env.values())
    assert len(names) == 4  # one per neuron, plus the validator's aggregator bucket
    assert all(d == datasets[0] for d in datasets)
    assert buckets_from_env(datasets[0], ("dataset",))["dataset"].write is None


def test_the_callers_r2_variables_do_not_leak_into_the_neurons() -> None:
    env = neuron_environment(
        {"PATH": "/bin", "R2_AGGREGATOR_ACCOUNT_ID": "mine"}, {"R2_GRADIENTS_ACCOUNT_ID": "x"}
    )
    assert env == {"PATH": "/bin", "R2_GRADIENTS_ACCOUNT_ID": "x"}


def test_s3_windows_open_on_whole_seconds(tmp_path) -> None:
    assert whole_second_blocks(0.5) == 6
    assert whole_second_blocks(0.4) == 5
    hparams, _ = prepare(tmp_path, LocalnetOptions(storage="s3", block_time=0.5))
    assert hparams.blocks_per_window == 6
    options = LocalnetOptions(storage="s3", block_time=0.5, overrides={"blocks_per_window": 5})
    with pytest.raises(ConfigError, match="whole seconds"):
        prepare(tmp_path / "other", options)


def test_faulty_takes_several_modes_one_miner_each(tmp_path) -> None:
    _, specs = prepare(tmp_path, LocalnetOptions(miners=2, faulty="garbage, copier"))
    assert [(s.hotkey, s.faulty) for s in specs[3:]] == [
        ("miner-3-garbage", "garbage"),
        ("miner-4-copier", "copier"),
    ]
    args = command(tmp_path, specs[4], 0.5, LocalDirectories(tmp_path))
    assert args[-2:] == ["--faulty", "copier"]
    for bad in ("copier,copier", "garbage,lazy"):
        with pytest.raises(ValueError, match="distinct modes"):
            LocalnetOptions(faulty=bad)


def test_the_lm_localnet_fills_its_dataset_bucket_and_lengthens_its_windows(tmp_path) -> None:
    hparams, _ = prepare(tmp_path, LocalnetOptions(overrides={"task": "lm"}))
    assert (hparams.task, hparams.blocks_per_window, hparams.batch_size) == ("lm", 16, 8)
    assert hparams.duplicate_threshold == TASK_HPARAMS["lm"]["duplicate_threshold"]
    (tmp_path / "tiny").mkdir()
    tiny, _ = prepare(tmp_path / "tiny", LocalnetOptions())
    assert (tiny.task, tiny.blocks_per_window) == ("tiny", 5)
    storage = LocalDirectories(tmp_path)
    assert fill_dataset(storage) == corpus.PAGES * corpus.PAGE_BYTES
    read = LocalStoreOpener(storage.root).open(local_dataset_bucket())
    assert asyncio.run(read.get(corpus.page_key(0))).data == corpus.pages()[0]
