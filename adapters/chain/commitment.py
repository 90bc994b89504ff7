"""The on-chain bucket commitment, in Templar's format.

A commitment is one 128-character string: account id (32) + access key id (32) + secret
access key (64). It carries no bucket name and no endpoint: like Templar, readers use the
account id as the bucket name and derive the R2 endpoint from it. Every chain adapter encodes
and parses through this module so that all of them agree on what is valid.

Error messages name the offending field and its length, never its content: the string holds a
(read) secret, and the content of a hostile commitment is not worth echoing into logs.
"""

from __future__ import annotations

import re

from ports import Bucket

ACCOUNT_ID_LENGTH = 32
ACCESS_KEY_ID_LENGTH = 32
SECRET_ACCESS_KEY_LENGTH = 64
COMMITMENT_LENGTH = ACCOUNT_ID_LENGTH + ACCESS_KEY_ID_LENGTH + SECRET_ACCESS_KEY_LENGTH

# The account id becomes a bucket name and a host name label (`{id}.r2.cloudflarestorage.com`),
# so it must be a valid DNS label: a hostile value must never redirect a reader elsewhere.
_ACCOUNT_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# Keys are handed to an S3 signer as-is; printable ASCII without spaces is what R2 issues.
_KEY = re.compile(r"[!-~]+")


class MalformedCommitment(ValueError):
    """A commitment (or a bucket to commit) that does not fit the format."""


def _check(field: str, value: object, length: int, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str):
        raise MalformedCommitment(f"{field} is not a string")
    if len(value) != length:
        raise MalformedCommitment(f"{field} has {len(value)} characters, expected {length}")
    if not pattern.fullmatch(value):
        raise MalformedCommitment(f"{field} contains characters outside the allowed set")
    return value


def encode_bucket(bucket: Bucket) -> str:
    """The commitment string for `bucket`; raises `MalformedCommitment` if it cannot be one.

    The bucket's name must equal its account id, as Templar readers assume; its endpoint is
    not committed (readers derive it).
    """
    account_id = _check("account_id", bucket.account_id, ACCOUNT_ID_LENGTH, _ACCOUNT_ID)
    access_key_id = _check("access_key_id", bucket.access_key_id, ACCESS_KEY_ID_LENGTH, _KEY)
    secret = _check("secret_access_key", bucket.secret_access_key, SECRET_ACCESS_KEY_LENGTH, _KEY)
    if bucket.name != account_id:
        raise MalformedCommitment(
            "bucket name must equal the account id: a commitment carries no name and "
            "readers use the account id as the bucket name"
        )
    return account_id + access_key_id + secret


def parse_commitment(text: object) -> Bucket:
    """The read bucket committed as `text`; raises `MalformedCommitment` when it is not one."""
    if not isinstance(text, str):
        raise MalformedCommitment(f"commitment is a {type(text).__name__}, not a string")
    if len(text) != COMMITMENT_LENGTH:
        raise MalformedCommitment(
            f"commitment has {len(text)} characters, expected {COMMITMENT_LENGTH}"
        )
    account_end = ACCOUNT_ID_LENGTH
    key_end = account_end + ACCESS_KEY_ID_LENGTH
    account_id = _check("account_id", text[:account_end], ACCOUNT_ID_LENGTH, _ACCOUNT_ID)
    access_key_id = _check("access_key_id", text[account_end:key_end], ACCESS_KEY_ID_LENGTH, _KEY)
    secret = _check("secret_access_key", text[key_end:], SECRET_ACCESS_KEY_LENGTH, _KEY)
    return Bucket(
        name=account_id,
        account_id=account_id,
        access_key_id=access_key_id,
        secret_access_key=secret,
    )
