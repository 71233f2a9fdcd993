"""The streamed secretbox (agent-crypto.md §7.3, xftp-ntf.md §1.10): bytes and in-place paths
agree with each other, with any split of the data, and with libsodium's one-shot secretbox."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp import crypto
from sansio_smp.crypto import SecretBoxStream

pieces_of = st.lists(st.binary(max_size=3000), max_size=8)


def _one_shot(secret: bytes, nonce: bytes, data: bytes) -> tuple[bytes, bytes]:
    box = crypto.secretbox_seal(crypto.box_key(secret), nonce, data)  # tag ‖ ciphertext
    return box[16:], box[:16]


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=24, max_size=24), pieces_of)
def test_stream_equals_one_shot_secretbox(secret: bytes, nonce: bytes, pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    ct, tag = _one_shot(secret, nonce, data)
    enc = SecretBoxStream(secret, nonce)
    assert b"".join(enc.encrypt(p) for p in pieces) == ct
    assert enc.tag() == tag
    inplace = SecretBoxStream(secret, nonce)
    out = []
    for p in pieces:
        buf = bytearray(p)
        inplace.encrypt_in_place(memoryview(buf))
        out.append(bytes(buf))
    assert b"".join(out) == ct and inplace.tag() == tag


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=24, max_size=24), pieces_of, st.data())
def test_decrypt_paths_agree_with_any_split(secret: bytes, nonce: bytes, pieces: list[bytes], data) -> None:  # type: ignore[no-untyped-def]
    plain = b"".join(pieces)
    ct, tag = _one_shot(secret, nonce, plain)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ct)), max_size=6)))
    parts = [ct[a:b] for a, b in zip([0, *cuts], [*cuts, len(ct)])]
    dec = SecretBoxStream(secret, nonce)
    assert b"".join(dec.decrypt(p) for p in parts) == plain and dec.tag() == tag
    dec2 = SecretBoxStream(secret, nonce)
    got = bytearray()
    for p in parts:
        buf = bytearray(p)
        dec2.decrypt_in_place(buf)
        got += buf
    assert bytes(got) == plain and dec2.tag() == tag


def test_tampered_ciphertext_changes_the_tag() -> None:
    secret, nonce = bytes(range(32)), bytes(range(24))
    ct, tag = _one_shot(secret, nonce, b"x" * 1000)
    bad = bytearray(ct)
    bad[500] ^= 1
    dec = SecretBoxStream(secret, nonce)
    dec.decrypt(bytes(bad))
    assert dec.tag() != tag
