"""R2 buckets from Templar's environment variables (R2_GRADIENTS_*, R2_AGGREGATOR_*, ...).

Pure: it reads the mapping it is given, so the composition root passes `os.environ` and tests
pass a dict. Errors name the missing variables and never echo a value.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import attrs

from ports import Bucket

ROLES = ("gradients", "aggregator", "dataset")


class MissingEnv(ValueError):
    """Required R2 variables are unset or empty."""

    def __init__(self, names: list[str]) -> None:
        super().__init__("missing R2 environment variables: " + ", ".join(names))
        self.names = names


@attrs.frozen
class RoleBuckets:
    """One bucket reached with its read key and, if configured, its write key."""

    read: Bucket
    write: Bucket | None


def buckets_from_env(
    env: Mapping[str, str], roles: Iterable[str] = ROLES, *, writable: Iterable[str] = ()
) -> dict[str, RoleBuckets]:
    """Read and write Buckets for each role.

    For role `gradients` the variables are `R2_GRADIENTS_ACCOUNT_ID`, `..._BUCKET_NAME`,
    `..._READ_ACCESS_KEY_ID`, `..._READ_SECRET_ACCESS_KEY` (required) and
    `..._WRITE_ACCESS_KEY_ID`, `..._WRITE_SECRET_ACCESS_KEY` (optional as a pair: Templar's
    dataset bucket has none; required for the roles in `writable`). `..._ENDPOINT` (ours, not
    Templar's) overrides R2's endpoint, for S3-compatible stores. Raises `MissingEnv` listing
    every missing name at once.
    """
    missing: list[str] = []
    writable = frozenset(writable)
    found: dict[str, RoleBuckets] = {}

    def need(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            missing.append(name)
        return value

    for role in roles:
        p = f"R2_{role.upper()}_"
        account, name = need(p + "ACCOUNT_ID"), need(p + "BUCKET_NAME")
        read_id, read_secret = need(p + "READ_ACCESS_KEY_ID"), need(p + "READ_SECRET_ACCESS_KEY")
        endpoint = env.get(p + "ENDPOINT", "").strip() or None
        write_names = (p + "WRITE_ACCESS_KEY_ID", p + "WRITE_SECRET_ACCESS_KEY")
        write_id, write_secret = (env.get(n, "").strip() for n in write_names)
        if bool(write_id) != bool(write_secret):
            missing.append(write_names[0] if not write_id else write_names[1])
        elif role in writable and not write_id:
            missing.extend(write_names)
        if missing:
            continue

        bucket = functools.partial(Bucket, name=name, account_id=account, endpoint=endpoint)
        found[role] = RoleBuckets(
            read=bucket(access_key_id=read_id, secret_access_key=read_secret),
            write=(
                bucket(access_key_id=write_id, secret_access_key=write_secret) if write_id else None
            ),
        )
    if missing:
        raise MissingEnv(missing)
    return found
