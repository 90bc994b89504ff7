"""Payload signers and verifiers (implement ports.signing).

- `Sr25519Signer` / `Sr25519Verifier`: the production scheme. Signs a digest with a hotkey
  keypair and verifies against an SS58 hotkey address as listed on the metagraph. Backed by
  `bittensor_core.Keypair` (installed with the bittensor SDK), imported only when used.
- `HmacSigner` / `HmacVerifier`: shared-secret HMAC-SHA256 for tests and closed local
  networks; it proves nothing to a party that does not hold the secret.
- `dev_signer` / `DevKeyVerifier`: HMAC with a key every party derives from the hotkey's
  name: the fake chain's scheme (its hotkeys are names, with no key pairs).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any


def _keypair_class() -> Any:
    try:
        from bittensor_core import Keypair  # optional: only sr25519 users need the SDK
    except ImportError as exc:
        raise RuntimeError("sr25519 signing needs the bittensor SDK (bittensor_core)") from exc
    return Keypair


class Sr25519Signer:
    scheme = "sr25519"

    def __init__(self, keypair: Any):
        self._keypair = keypair

    def __repr__(self) -> str:
        return f"Sr25519Signer({self.hotkey!r})"

    @classmethod
    def from_uri(cls, uri: str) -> Sr25519Signer:
        """A development key such as "//Alice"."""
        return cls(_keypair_class().create_from_uri(uri))

    @classmethod
    def from_wallet(cls, wallet: Any) -> Sr25519Signer:
        """The hotkey of a bittensor `Wallet` (anything with a `.hotkey` keypair)."""
        return cls(wallet.hotkey)

    @property
    def hotkey(self) -> str:
        return self._keypair.ss58_address

    def sign(self, digest: bytes) -> bytes:
        return bytes(self._keypair.sign(digest))


class Sr25519Verifier:
    scheme = "sr25519"

    def __init__(self) -> None:
        self._keypair = _keypair_class()
        self._cache: dict[str, Any] = {}

    def verify(self, digest: bytes, signature: bytes, hotkey: str) -> bool:
        try:
            public = self._cache.get(hotkey)
            if public is None:
                public = self._keypair(ss58_address=hotkey)
                if len(self._cache) < 4096:
                    self._cache[hotkey] = public
            return bool(public.verify(digest, signature))
        except Exception:  # a malformed hotkey or signature is simply not valid
            return False


class HmacSigner:
    scheme = "hmac-sha256"

    def __init__(self, secret: bytes):
        self._secret = secret

    def __repr__(self) -> str:
        return "HmacSigner(<secret>)"

    def sign(self, digest: bytes) -> bytes:
        return hmac.new(self._secret, digest, hashlib.sha256).digest()


class HmacVerifier:
    scheme = "hmac-sha256"

    def __init__(self, secrets: Mapping[str, bytes]):
        self._secrets = dict(secrets)

    def __repr__(self) -> str:
        return f"HmacVerifier({sorted(self._secrets)!r})"

    def verify(self, digest: bytes, signature: bytes, hotkey: str) -> bool:
        secret = self._secrets.get(hotkey)
        if secret is None:
            return False
        return hmac.compare_digest(hmac.new(secret, digest, hashlib.sha256).digest(), signature)


def dev_secret(hotkey: str) -> bytes:
    """The well-known HMAC key of `hotkey` on a fake chain (see `DevKeyVerifier`)."""
    return hashlib.sha256(b"templar-comms/dev-hotkey-secret/v1\n" + hotkey.encode()).digest()


def dev_signer(hotkey: str) -> HmacSigner:
    return HmacSigner(dev_secret(hotkey))


class DevKeyVerifier:
    """Checks HMAC signatures made with `dev_secret(hotkey)`.

    For the fake chain's named hotkeys ("miner-1"), which have no key pairs: every neuron can
    derive every key, so a signature proves nothing against a peer that wants to forge one.
    It keeps the signing path (unsigned, forged, relabelled payloads are refused) exercised
    without the bittensor SDK; a real subnet uses sr25519.
    """

    scheme = HmacSigner.scheme

    def __repr__(self) -> str:
        return "DevKeyVerifier()"

    def verify(self, digest: bytes, signature: bytes, hotkey: str) -> bool:
        mac = hmac.new(dev_secret(hotkey), digest, hashlib.sha256).digest()
        return hmac.compare_digest(mac, signature)
