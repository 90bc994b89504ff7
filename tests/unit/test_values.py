"""The ports' value objects: validation and secrets."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest

from ports import Blob, Bucket, Metagraph, ObjectMeta, TooLarge

SECRET = "s3cr3t-value-that-must-never-leak-0123456789abcdef0123456789abcdef"


def test_bucket_secret_is_hidden_from_repr_and_str() -> None:
    b = Bucket(name="g", account_id="acc", access_key_id="AKID", secret_access_key=SECRET)
    for text in (repr(b), str(b), f"{b}", repr([b]), repr({"b": b})):
        assert SECRET not in text
    assert "AKID" in repr(b)
    assert b.endpoint_url == "https://acc.r2.cloudflarestorage.com"
    assert attrs.evolve(b, endpoint="http://127.0.0.1:1").endpoint_url == "http://127.0.0.1:1"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        b.name = "x"  # type: ignore[misc]


def test_object_meta_needs_a_tz_aware_time_and_a_size() -> None:
    with pytest.raises(ValueError):
        ObjectMeta(key="k", size=1, last_modified=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        ObjectMeta(key="k", size=-1, last_modified=datetime(2025, 1, 1, tzinfo=UTC))
    meta = ObjectMeta(key="k", size=3, last_modified=datetime(2025, 1, 1, tzinfo=UTC))
    assert "abc" not in repr(Blob(meta=meta, data=b"abc"))  # payloads stay out of logs


def test_too_large_message_names_the_sizes() -> None:
    err = TooLarge("k", 10, 5)
    assert "10" in str(err) and "5" in str(err)


def test_metagraph_lookups_and_validation() -> None:
    mg = Metagraph(
        block=7,
        uids=[0, 1, 2],
        hotkeys=["a", "b", "c"],
        stakes=[5.0, 9.0, 5.0],
        incentives=[0.1, 0.2, 0.3],
        validator_permits=[True, True, False],
    )
    assert mg.hotkey(1) == "b" and mg.hotkey(9) is None
    assert mg.uid("c") == 2 and mg.uid("zz") is None
    assert mg.stake(1) == 9.0 and mg.stake(42) == 0.0
    assert mg.validators() == (1, 0)
    with pytest.raises(ValueError):
        Metagraph(
            block=1,
            uids=[0, 1],
            hotkeys=["a"],
            stakes=[1, 2],
            incentives=[0, 0],
            validator_permits=[False, False],
        )
    with pytest.raises(ValueError):
        Metagraph(
            block=1,
            uids=[0, 0],
            hotkeys=["a", "b"],
            stakes=[1, 2],
            incentives=[0, 0],
            validator_permits=[False, False],
        )
