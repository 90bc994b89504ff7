"""Signing port: the domain signs and checks payload digests without any crypto library.

The production adapter signs with the miner's hotkey (sr25519) and verifies against the
hotkey (SS58 address) registered on the metagraph; see adapters/signing.py.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Signer(Protocol):
    """Signs with this neuron's own hotkey."""

    @property
    def scheme(self) -> str:
        """Short name of the signature scheme, e.g. "sr25519"; written beside the signature."""
        ...

    def sign(self, digest: bytes) -> bytes:
        """Signature over `digest` (a 32-byte sha256)."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Checks another neuron's signature against the hotkey the chain lists for it."""

    @property
    def scheme(self) -> str: ...

    def verify(self, digest: bytes, signature: bytes, hotkey: str) -> bool:
        """True only for a valid signature by `hotkey`; False (never raises) otherwise."""
        ...
