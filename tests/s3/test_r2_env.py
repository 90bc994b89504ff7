"""Templar's R2 environment variables into read and write Buckets."""

from __future__ import annotations

import pytest

from adapters.storage.r2_env import MissingEnv, buckets_from_env


def role_env(role: str, write: bool = True) -> dict[str, str]:
    p = f"R2_{role.upper()}_"
    env = {
        p + "ACCOUNT_ID": f"{role}-account",
        p + "BUCKET_NAME": f"{role}-bucket",
        p + "READ_ACCESS_KEY_ID": f"{role}-read-id",
        p + "READ_SECRET_ACCESS_KEY": f"{role}-read-sekrit",
    }
    if write:
        env[p + "WRITE_ACCESS_KEY_ID"] = f"{role}-write-id"
        env[p + "WRITE_SECRET_ACCESS_KEY"] = f"{role}-write-sekrit"
    return env


def test_all_roles_with_read_and_write_keys() -> None:
    env = role_env("gradients") | role_env("aggregator") | role_env("dataset", write=False)
    found = buckets_from_env(env)
    assert set(found) == {"gradients", "aggregator", "dataset"}
    grads = found["gradients"]
    assert grads.read.name == grads.write.name == "gradients-bucket"
    assert grads.read.access_key_id == "gradients-read-id"
    assert grads.write.secret_access_key == "gradients-write-sekrit"
    assert grads.read.endpoint_url == "https://gradients-account.r2.cloudflarestorage.com"
    assert found["dataset"].write is None
    assert "sekrit" not in repr(found)


def test_endpoint_override_and_role_subset() -> None:
    env = role_env("gradients") | {"R2_GRADIENTS_ENDPOINT": "http://127.0.0.1:8333"}
    found = buckets_from_env(env, roles=["gradients"])
    assert found["gradients"].write.endpoint_url == "http://127.0.0.1:8333"


def test_missing_variables_are_all_named_and_no_value_is_echoed() -> None:
    env = role_env("gradients")
    del env["R2_GRADIENTS_BUCKET_NAME"]
    env["R2_GRADIENTS_READ_ACCESS_KEY_ID"] = "  "
    del env["R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY"]  # half a write pair is an error
    with pytest.raises(MissingEnv) as info:
        buckets_from_env(env | role_env("aggregator"), roles=["gradients", "aggregator", "dataset"])
    assert info.value.names == [
        "R2_GRADIENTS_BUCKET_NAME",
        "R2_GRADIENTS_READ_ACCESS_KEY_ID",
        "R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY",
        "R2_DATASET_ACCOUNT_ID",
        "R2_DATASET_BUCKET_NAME",
        "R2_DATASET_READ_ACCESS_KEY_ID",
        "R2_DATASET_READ_SECRET_ACCESS_KEY",
    ]
    assert "sekrit" not in str(info.value)


def test_write_keys_required_for_writable_roles_are_named_with_the_rest() -> None:
    env = role_env("gradients", write=False) | role_env("aggregator", write=False)
    with pytest.raises(MissingEnv) as info:
        buckets_from_env(env, roles=["gradients", "aggregator"], writable=["gradients"])
    assert info.value.names == [
        "R2_GRADIENTS_WRITE_ACCESS_KEY_ID",
        "R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY",
    ]
    # without `writable`, a bucket without write keys is a read-only one
    assert buckets_from_env(env, roles=["gradients"])["gradients"].write is None
