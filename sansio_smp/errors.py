"""Typed errors shared by every machine and parser (h11 style).

* :class:`RemoteProtocolError` — the peer sent bytes we cannot accept. Parsers raise
  :class:`ParseError`, a subclass, so a fuzzer's invariant is simply
  "a value or a ``RemoteProtocolError``, never another exception".
* :class:`LocalProtocolError` — our own caller misused a machine (sending a command in the
  wrong state, an over-long field).
* :class:`CryptoError` — authentication/decryption failure (wrong key, tampered bytes).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error this package raises on purpose."""


class RemoteProtocolError(ProtocolError):
    """The peer's bytes violate the protocol."""


class ParseError(RemoteProtocolError, ValueError):
    """Bytes that do not parse as the expected value (smp.md §0)."""


class LocalProtocolError(ProtocolError):
    """The local caller asked for something the protocol does not allow."""


class CryptoError(RemoteProtocolError):
    """A MAC, signature or AEAD tag did not verify, or a key is unusable."""
