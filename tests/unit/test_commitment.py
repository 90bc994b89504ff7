"""The bucket commitment string: Templar's layout, and what is refused."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.chain.commitment import (
    COMMITMENT_LENGTH,
    MalformedCommitment,
    encode_bucket,
    parse_commitment,
)
from ports import Bucket

ACCOUNT = "0123456789abcdef0123456789abcdef"
ACCESS_KEY = "A" * 32
SECRET = "s3cr3t-" + "x" * 57


def bucket(**changes: str) -> Bucket:
    made = Bucket(
        name=ACCOUNT, account_id=ACCOUNT, access_key_id=ACCESS_KEY, secret_access_key=SECRET
    )
    return attrs.evolve(made, **changes)


def test_layout_is_account_then_access_key_then_secret() -> None:
    text = encode_bucket(bucket())
    assert len(text) == COMMITMENT_LENGTH == 128
    assert (text[:32], text[32:64], text[64:]) == (ACCOUNT, ACCESS_KEY, SECRET)


def test_parse_uses_the_account_id_as_bucket_name_and_r2_endpoint() -> None:
    parsed = parse_commitment(ACCOUNT + ACCESS_KEY + SECRET)
    assert parsed == bucket()
    assert parsed.name == ACCOUNT
    assert parsed.endpoint is None
    assert parsed.endpoint_url == f"https://{ACCOUNT}.r2.cloudflarestorage.com"


def test_endpoint_is_not_committed() -> None:
    assert encode_bucket(bucket(endpoint="http://127.0.0.1:8333")) == encode_bucket(bucket())


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "gradients"},
        {"account_id": "short", "name": "short"},
        {"access_key_id": "A" * 31},
        {"secret_access_key": SECRET + "y"},
        {"secret_access_key": "x" * 63 + " "},
        {"account_id": "A" * 32, "name": "A" * 32},
        {"account_id": "-" + "a" * 31, "name": "-" + "a" * 31},
    ],
)
def test_buckets_that_cannot_be_committed(changes: dict[str, str]) -> None:
    # MalformedCommitment, or a ValueError from the Bucket itself (no DNS label).
    with pytest.raises(ValueError) as raised:
        encode_bucket(bucket(**changes))
    assert SECRET not in str(raised.value)
    assert "x" * 20 not in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        None,
        b"bytes are not text" * 8,
        "",
        "a" * 127,
        "a" * 129,
        "evil.example.com/" + "a" * 111,
        "a" * 64 + "secret with spaces".ljust(64, "z"),
        "a" * 64 + "\x00" * 64,
        "a" * 64 + "é" * 64,
    ],
)
def test_malformed_commitments_raise_without_echoing_them(text: object) -> None:
    with pytest.raises(MalformedCommitment) as raised:
        parse_commitment(text)
    message = str(raised.value)
    assert "secret" not in message.replace("secret_access_key", "")
    assert "evil" not in message


@given(
    account=st.from_regex(r"[a-z0-9]{32}", fullmatch=True),
    key=st.from_regex(r"[!-~]{32}", fullmatch=True),
    secret=st.from_regex(r"[!-~]{64}", fullmatch=True),
)
def test_round_trip(account: str, key: str, secret: str) -> None:
    made = Bucket(name=account, account_id=account, access_key_id=key, secret_access_key=secret)
    assert parse_commitment(encode_bucket(made)) == made
