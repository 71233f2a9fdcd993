"""NIST AES-256-CTR DRBG as in the PQC KAT generator ``rng.c`` (``randombytes_init`` / ``randombytes``).

Test and KAT tooling for agent/sntrup761.py (agent-crypto.md §6 "KAT"): pure and deterministic, the only
dependency is AES-256 (ECB on the counter block) from the ``cryptography`` package.

* ``randombytes_init(entropy, personalization)``: Key = 0^32, V = 0^16, then ``update(entropy ⊕ pers)``.
* ``randombytes(n)``: for each 16-byte block, V += 1 (128-bit big-endian) and output AES_Key(V); the
  last block is truncated; then ``update(None)``. Each call ends with a re-key, so the output depends on
  how the requests are split.
* ``update(data)``: three blocks AES_Key(V+1), AES_Key(V+2), AES_Key(V+3) (incrementing V), XOR data,
  Key = first 32 bytes, V = last 16 bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["NistDrbg"]

_MASK128 = (1 << 128) - 1


class NistDrbg:
    """The NIST KAT deterministic random bit generator (``rng.c``), one instance per ``randombytes_init``."""

    def __init__(self, entropy_input: bytes, personalization: bytes | None = None) -> None:
        if len(entropy_input) != 48:
            raise ValueError("entropy_input must be 48 bytes")
        seed = bytes(entropy_input)
        if personalization is not None:
            if len(personalization) != 48:
                raise ValueError("personalization must be 48 bytes")
            seed = bytes(a ^ b for a, b in zip(seed, personalization))
        self._key = bytes(32)
        self._v = 0
        self.reseed_counter = 1
        self._update(seed)

    def _blocks(self, count: int) -> bytes:
        """AES_Key(V+1) ‖ … ‖ AES_Key(V+count), leaving V advanced by ``count``."""
        v = self._v
        counters = b"".join(((v + i) & _MASK128).to_bytes(16, "big") for i in range(1, count + 1))
        self._v = (v + count) & _MASK128
        enc = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()
        return enc.update(counters) + enc.finalize()

    def _update(self, provided: bytes | None) -> None:
        temp = self._blocks(3)
        if provided is not None:
            temp = bytes(a ^ b for a, b in zip(temp, provided))
        self._key = temp[:32]
        self._v = int.from_bytes(temp[32:], "big")

    def random_bytes(self, n: int) -> bytes:
        """``randombytes(x, n)``: n bytes, then the state update (one call = one re-key)."""
        if n < 0:
            raise ValueError("n must be non-negative")
        out = self._blocks((n + 15) // 16)[:n]
        self._update(None)
        self.reseed_counter += 1
        return out

    __call__ = random_bytes
