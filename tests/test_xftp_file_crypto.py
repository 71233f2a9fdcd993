"""XFTP file formats against ../shared/vectors/xftp (copied to tests/data/xftp):
encoding.json, padding.json, keys.json, secretbox.json, chunks.json, file.json (xftp-ntf.md §0, §1.9, §1.10)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp import encoding as enc
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey, SecretBoxStream, cb_decrypt, cb_encrypt
from sansio_smp.errors import CryptoError, LocalProtocolError, ParseError
from xftp import file_crypto as fc

DATA = Path(__file__).parent / "data" / "xftp"


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def det(label: str, n: int) -> bytes:
    """The vectors' deterministic input bytes (README "Reproducible inputs")."""
    prefix = b"sansio-xftp vectors v1\x00" + label.encode()
    blocks = (hashlib.sha512(prefix + i.to_bytes(4, "big")).digest() for i in range(-(-n // 64)))
    return b"".join(blocks)[:n]


def content_of(case: dict) -> bytes:
    c = case["content"]
    if isinstance(c, str):
        return h(c)
    label = c["from"].split('"')[1]
    data = det(label, case["content_length"])
    assert hashlib.sha256(data).hexdigest() == c["sha256"]
    return data


ENCODING = load("encoding")
PADDING = load("padding")
KEYS = load("keys")
SECRETBOX = load("secretbox")
CHUNKS = load("chunks")
FILE = load("file")


# ---------------------------------------------------------------- encoding.json (shared encoding layer)

_ENCODERS = {
    "encodeWord16": lambda v: enc.w16(v),
    "encodeWord32": lambda v: enc.w32(v),
    "encodeInt64": lambda v: enc.i64(int(v)),
    "encodeBytes": lambda v: enc.sb(h(v)),
    "encodeLarge": lambda v: enc.lg(h(v)),
    "encodeTail": lambda v: h(v),
    "encodeBool": lambda v: enc.boolean(v),
    "encodeString": lambda v: enc.sb(v.encode()),
    "encodeMaybe(encodeBytes)": lambda v: enc.mb(None if v is None else enc.sb(h(v))),
    "encodeList(encodeBytes)": lambda v: enc.lst(enc.sb(h(x)) for x in v),
    "encodeNonEmpty(encodeBytes)": lambda v: enc.ne(enc.sb(h(x)) for x in v),
}


@pytest.mark.parametrize("case", ENCODING["encode"], ids=lambda c: c["id"])
def test_encoding_encode(case):
    assert _ENCODERS[case["function"]](case["input"]).hex() == case["expected"]


def test_encoding_encode_errors():
    with pytest.raises(LocalProtocolError):
        enc.sb(bytes(256))
    with pytest.raises(LocalProtocolError):
        enc.lg(bytes(65536))
    with pytest.raises(LocalProtocolError):
        enc.ne([])
    assert len(ENCODING["encode_errors"]) == 3


_DECODERS = {
    "decodeWord16": lambda r: r.w16(),
    "decodeWord32": lambda r: r.w32(),
    "decodeInt64": lambda r: str(r.i64()),
    "decodeBytes": lambda r: r.sb().hex(),
    "decodeLarge": lambda r: r.lg().hex(),
    "decodeBool": lambda r: r.boolean(),
    "decodeString": lambda r: r.sb().decode(),
    "decodeMaybe(decodeBytes)": lambda r: r.maybe(lambda x: x.sb().hex()),
    "decodeList(decodeBytes)": lambda r: r.lst(lambda x: x.sb().hex()),
    "decodeNonEmpty(decodeBytes)": lambda r: r.ne(lambda x: x.sb().hex()),
    "decodeTail": lambda r: r.tail().hex(),
}


@pytest.mark.parametrize("case", ENCODING["decode"], ids=lambda c: c["id"])
def test_encoding_decode(case):
    r = enc.Reader(h(case["input"]))
    exp = case["expected"]
    if not exp["ok"]:
        with pytest.raises(ParseError):
            _DECODERS[case["function"]](r)
        return
    assert _DECODERS[case["function"]](r) == exp["value"]
    assert (r.pos, r.remaining) == (exp["consumed"], exp["remaining"])


def test_digests():
    for c in ENCODING["digests"]:
        assert hashlib.sha256(h(c["input"])).hexdigest() == c["sha256"]
        assert hashlib.sha512(h(c["input"])).hexdigest() == c["sha512"]
    s = ENCODING["digest_streaming"]
    data = det("digest/streaming", 300000)
    assert hashlib.sha256(data).hexdigest() == s["input_sha256"]
    hs, pos = hashlib.sha512(), 0
    for n in s["split_at"]:
        hs.update(data[pos : pos + n])
        pos += n
    hs.update(data[pos:])
    assert hs.hexdigest() == s["sha512"] == s["sha512_one_shot"]


def test_base64url():
    for c in ENCODING["base64url_encode"]:
        assert enc.b64url_encode(h(c["bytes"])) == c["text"]
    for c in ENCODING["base64url_decode"]:
        assert enc.b64url_decode(c["text"]) == h(c["bytes"])


# ---------------------------------------------------------------- padding.json


@pytest.mark.parametrize("case", PADDING["strict"], ids=lambda c: c["id"])
def test_strict_pad(case):
    padded = enc.pad(h(case["message"]), int(case["padded_length"]))
    assert padded.hex() == case["expected"]
    assert enc.unpad(padded).hex() == case["unpad"]


def test_strict_pad_errors():
    with pytest.raises(LocalProtocolError):
        enc.pad(bytes(63), 64)
    for bad in ("0005616263", "00"):
        with pytest.raises(ParseError):
            enc.unpad(h(bad))


@pytest.mark.parametrize("case", PADDING["lazy"], ids=lambda c: c["id"])
def test_lazy_pad(case):
    padded = fc.lazy_pad(h(case["message"]), int(case["padded_length"]))
    assert padded.hex() == case["expected"]
    assert fc.lazy_unpad(padded).hex() == case["unpad"]
    n, content = fc.split_len(padded)
    assert (str(n), content.hex()) == (case["split_len"]["len"], case["split_len"]["content"])


def test_lazy_pad_truncated_and_errors():
    t = PADDING["lazy_truncated"]
    n, content = fc.split_len(h(t["input"]))
    assert (str(n), content.hex()) == (t["expected"]["len"], t["expected"]["content"])
    with pytest.raises(fc.FileCryptoError):
        fc.split_len(h("ffffffffffffffff00"))
    with pytest.raises(LocalProtocolError):
        fc.lazy_pad(bytes(57), 64)


@pytest.mark.parametrize("case", PADDING["block_16384"], ids=lambda c: c["id"])
def test_block_pad(case):
    block = enc.pad(h(case["message"]), 16384)
    assert hashlib.sha256(block).hexdigest() == case["block"]["sha256"]
    if "hex" in case["block"]:
        assert block.hex() == case["block"]["hex"]
    assert enc.unpad(block).hex() == case["unpad"]


def test_block_other_sizes_and_errors():
    for c in PADDING["block_other_sizes"]:
        assert enc.pad(h(c["message"]), int(c["block_size"])).hex() == c["expected"]
    with pytest.raises(LocalProtocolError):
        enc.pad(bytes(16383), 16384)
    with pytest.raises(ParseError):
        enc.unpad(h(PADDING["block_errors"][1]["input"]))


# ---------------------------------------------------------------- keys.json (shared crypto layer)


@pytest.mark.parametrize("case", KEYS["ed25519"], ids=lambda c: c["id"])
def test_ed25519_keys(case):
    exp = case["expected"]
    priv = PrivateKey(KeyAlgorithm.ED25519, h(case["seed"]))
    pub = priv.public()
    assert pub.raw.hex() == exp["public_key"]
    assert pub.spki().hex() == exp["spki_der"]
    assert priv.pkcs8().hex() == exp["pkcs8_der"]
    assert hashlib.sha256(pub.spki()).hexdigest() == exp["key_hash"]
    assert PrivateKey.from_pkcs8(h(exp["pkcs8_der"])) == priv
    for s in exp["signatures"]:
        msg, sig = h(s["message"]), h(s["signature"])
        assert priv.sign(msg) == sig
        assert pub.verify(sig, msg) is s["verify"]
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        assert pub.verify(flipped, msg) is s["verify_flipped_sig"]
        assert pub.verify(sig, msg + b"x") is s["verify_other_message"]


@pytest.mark.parametrize("case", KEYS["x25519"], ids=lambda c: c["id"])
def test_x25519_keys(case):
    priv = PrivateKey(KeyAlgorithm.X25519, h(case["private_key"]))
    assert priv.public().raw.hex() == case["expected"]["public_key"]
    assert priv.public().spki().hex() == case["expected"]["spki_der"]
    assert priv.pkcs8().hex() == case["expected"]["pkcs8_der"]


def test_x25519_dh_and_ed448():
    for c in KEYS["x25519_dh"]:
        a = PrivateKey(KeyAlgorithm.X25519, h(c["private_a"]))
        b = PrivateKey(KeyAlgorithm.X25519, h(c["private_b"]))
        assert a.dh(PublicKey(KeyAlgorithm.X25519, h(c["public_b"]))).hex() == c["expected"]["shared"]
        assert b.dh(a.public()).hex() == c["expected"]["shared_other_side"]
    for c in KEYS["ed448_verify"]:
        pub = PublicKey.from_spki(h(c["spki_der"]))
        assert pub.alg is KeyAlgorithm.ED448 and pub.raw.hex() == c["expected"]["public_key"]
        sig, msg = h(c["signature"]), h(c["message"])
        assert pub.verify(sig, msg) is True
        assert pub.verify(bytes([sig[0] ^ 1]) + sig[1:], msg) is False
        assert pub.verify(sig, msg + b"x") is False


@pytest.mark.parametrize("case", KEYS["decode"], ids=lambda c: c["id"])
def test_key_decoding(case):
    fn = case["function"]
    want_alg = {"Ed25519": KeyAlgorithm.ED25519, "X25519": KeyAlgorithm.X25519, "Ed448": KeyAlgorithm.ED448}[
        fn.replace("decodePubKey", "").replace("decodePrivKey", "")
    ]
    try:
        key = (PublicKey.from_spki if "Pub" in fn else PrivateKey.from_pkcs8)(h(case["input"]))
        ok = key.alg is want_alg
    except ParseError:
        ok = False
    assert ok is case["expected"]["ok"]
    if ok:
        assert key.raw.hex() == case["expected"]["value"]


# ---------------------------------------------------------------- secretbox.json


@pytest.mark.parametrize("case", SECRETBOX["box"], ids=lambda c: c["id"])
def test_secretbox_box(case):
    key, nonce, msg = h(case["key"]), h(case["nonce"]), h(case["message"])
    s = SecretBoxStream(key, nonce)
    ct = s.encrypt(msg)
    tag = s.tag()
    assert (tag.hex(), ct.hex()) == (case["expected"]["tag"], case["expected"]["ciphertext"])
    assert cb_encrypt(key, nonce, msg) == h(case["expected"]["box"])
    assert cb_decrypt(key, nonce, h(case["expected"]["box"]), padded=False) == msg


@pytest.mark.parametrize("case", SECRETBOX["cb_encrypt"], ids=lambda c: c["id"])
def test_cb_encrypt(case):
    key, nonce = h(case["key"]), h(case["nonce"])
    packet = cb_encrypt(key, nonce, h(case["message"]), case["padded_length"])
    exp = case["expected"]["packet"]
    if isinstance(exp, str):
        assert packet.hex() == exp
    else:
        assert hashlib.sha256(packet).hexdigest() == exp["sha256"]
    assert cb_decrypt(key, nonce, packet).hex() == case["expected"]["decrypt"]


def test_cb_decrypt_tampered():
    c = SECRETBOX["cb_decrypt_errors"][0]
    with pytest.raises(CryptoError):
        cb_decrypt(h(c["key"]), h(c["nonce"]), h(c["packet"]))


@pytest.mark.parametrize("case", SECRETBOX["tail_tag"], ids=lambda c: c["id"])
def test_tail_tag(case):
    key, nonce, msg, n = h(case["key"]), h(case["nonce"]), h(case["message"]), case["padded_length"]
    exp = case["expected"]
    out = fc.sb_encrypt_tail_tag(key, nonce, msg, n)
    assert out.hex() == exp["output"] == exp["ciphertext"] + exp["tag"]
    valid, content = fc.sb_decrypt_tail_tag(key, nonce, n, out)
    assert (valid, content.hex()) == (exp["decrypt_valid"], exp["decrypt_content"])
    bad_tag = out[:-1] + bytes([out[-1] ^ 1])
    assert fc.sb_decrypt_tail_tag(key, nonce, n, bad_tag)[0] is exp["decrypt_tampered_tag_valid"]
    bad_ct = out[: n - 1] + bytes([out[n - 1] ^ 1]) + out[n:]
    assert fc.sb_decrypt_tail_tag(key, nonce, n, bad_ct)[0] is exp["decrypt_tampered_last_ciphertext_byte"]["valid"]
    bad_len = bytes([out[0] ^ 0x80]) + out[1:]
    # the reference returns Left CryptoInvalidMsgError (xftp-web throws): a typed error here
    with pytest.raises(fc.FileCryptoError):
        fc.sb_decrypt_tail_tag(key, nonce, n, bad_len)


def test_streaming_splits():
    s = SECRETBOX["streaming"]
    key, nonce, msg = h(s["key"]), h(s["nonce"]), h(s["message"])
    for sp in s["splits"]:
        stream, pos, out = SecretBoxStream(key, nonce), 0, b""
        for n in sp["split"]:
            out += stream.encrypt(msg[pos : pos + n])
            pos += n
        out += stream.encrypt(msg[pos:])
        assert hashlib.sha256(out).hexdigest() == sp["ciphertext_sha256"] == s["one_shot"]["ciphertext_sha256"]
        assert stream.tag().hex() == sp["tag"] == s["one_shot"]["tag"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 200), max_size=8), st.binary(min_size=32, max_size=32))
def test_stream_any_split_roundtrip(msg, cuts, key):
    nonce = bytes(range(24))
    one = SecretBoxStream(key, nonce)
    whole = one.encrypt(msg)
    tag = one.tag()
    s, pos, out = SecretBoxStream(key, nonce), 0, b""
    for n in cuts:
        out += s.encrypt(msg[pos : pos + n])
        pos += n
    out += s.encrypt(msg[pos:])
    assert out == whole and s.tag() == tag
    d = SecretBoxStream(key, nonce)
    assert d.decrypt(whole) == msg and d.tag() == tag


# ---------------------------------------------------------------- chunks.json


@pytest.mark.parametrize("case", CHUNKS["prepare_chunk_sizes"], ids=lambda c: str(c["payload"]))
def test_prepare_chunk_sizes(case):
    sizes = fc.prepare_chunk_sizes(case["payload"])
    assert sizes == case["chunk_sizes"]
    assert sum(sizes) == case["enc_size"]


def test_chunk_constants_single_and_specs():
    assert list(fc.SERVER_CHUNK_SIZES) == CHUNKS["constants"]["server_chunk_sizes"]
    assert (fc.FILE_SIZE_LEN, fc.AUTH_TAG_SIZE) == (
        CHUNKS["constants"]["file_size_len"],
        CHUNKS["constants"]["auth_tag_size"],
    )
    for c in CHUNKS["single_chunk_size"]:
        assert fc.single_chunk_size(c["payload"]) == c["chunk_size"]
    for c in CHUNKS["chunk_specs"]:
        assert fc.chunk_specs(c["chunk_sizes"]) == [(s["offset"], s["size"]) for s in c["specs"]]


@pytest.mark.parametrize("case", CHUNKS["for_files"], ids=lambda c: c["file_name"])
def test_chunks_for_files(case):
    plan = fc.UploadPlan.for_file(case["file_name"], case["content_length"])
    assert len(plan.header) == case["header_length"]
    assert plan.file_size == case["file_size"]
    assert list(plan.chunk_sizes) == case["chunk_sizes"] and plan.enc_size == case["enc_size"]


def test_dossier_chunk_examples():
    """xftp-ntf.md §1.9 examples."""
    k64, k256, m1, m4 = fc.SERVER_CHUNK_SIZES
    assert fc.prepare_chunk_sizes(100) == [k64]
    assert fc.prepare_chunk_sizes(130000) == [k64, k64]
    assert fc.prepare_chunk_sizes(800000) == [m1]
    assert fc.prepare_chunk_sizes(27262976) == [m4] * 6 + [m1, m1]
    assert fc.prepare_chunk_sizes(0) == []


# ---------------------------------------------------------------- file.json


@pytest.mark.parametrize("case", FILE["file_headers"], ids=lambda c: c["id"])
def test_file_header(case):
    hdr = fc.FileHeader(case["file_name"], case["file_extra"])
    assert hdr.encode().hex() == case["expected"]
    p = case["parse_with_trailing"]
    r = enc.Reader(h(p["input"]))
    parsed = fc.FileHeader.parse(r)
    assert parsed == fc.FileHeader(p["file_name"], p["file_extra"])
    assert r.tail().hex() == p["rest"]


@pytest.mark.parametrize("case", FILE["encrypt_file"], ids=lambda c: c["id"])
def test_encrypt_file(case):
    key, nonce, content = h(case["key"]), h(case["nonce"]), h(case["content"])
    header = fc.FileHeader(case["file_name"], case["file_extra"]).encode()
    assert header.hex() == case["file_header"]
    exp = case["expected"]
    encrypted = fc.encrypt_file(key, nonce, header, content, case["enc_size"])
    assert encrypted.hex() == exp["encrypted"]
    assert encrypted[-16:].hex() == exp["tag"]
    s = SecretBoxStream(key, nonce)
    assert s.decrypt(encrypted[:-16]).hex() == exp["plaintext_stream"]
    hdr, got = fc.decrypt_file(key, nonce, encrypted)
    assert (hdr.file_name, hdr.file_extra, got.hex()) == (
        exp["decrypt"]["file_name"],
        exp["decrypt"]["file_extra"],
        exp["decrypt"]["content"],
    )


def test_encrypt_file_too_small():
    with pytest.raises(LocalProtocolError):
        fc.FileEncryptor(bytes(32), bytes(24), b"x" * 13, 0, 36)
    fc.FileEncryptor(bytes(32), bytes(24), b"x" * 13, 0, 37)


def _encrypt_streamed(case: dict, content: bytes, piece: int) -> bytes:
    exp = case["expected"]
    plan = fc.UploadPlan.for_file(case["file_name"], len(content))
    e = fc.FileEncryptor(h(exp["key"]), h(exp["nonce"]), plan.header, len(content), plan.enc_size)
    out = [e.start()]
    for i in range(0, len(content), piece):
        out.append(e.encrypt(content[i : i + piece]))
    out.extend(e.finish())
    return b"".join(out)


@pytest.mark.parametrize("case", FILE["upload"], ids=lambda c: c["id"])
def test_upload_encryption(case):
    """encryptFileForUpload: sizes, chunk digests, SHA-512 digest, streaming decryption."""
    exp = case["expected"]
    content = content_of(case)
    assert [d["bytes"] for d in case["random_draws"]] == [exp["key"], exp["nonce"]]
    plan = fc.UploadPlan.for_file(case["file_name"], len(content))
    assert plan.header.hex() == exp["file_header"]
    assert (plan.file_size, list(plan.chunk_sizes), plan.enc_size, plan.padding_length) == (
        exp["file_size"],
        exp["chunk_sizes"],
        exp["enc_size"],
        exp["padding_length"],
    )
    assert plan.file_size + 24 == exp["payload"]
    encrypted = _encrypt_streamed(case, content, 65536)
    if isinstance(exp["encrypted"], str):
        assert encrypted.hex() == exp["encrypted"]
    else:
        e = exp["encrypted"]
        assert len(encrypted) == e["length"]
        assert hashlib.sha256(encrypted).hexdigest() == e["sha256"]
        assert (encrypted[:64].hex(), encrypted[-64:].hex()) == (e["head"], e["tail"])
    assert encrypted[-16:].hex() == exp["tag"]
    dg = fc.ChunkDigester(plan.chunk_sizes)
    for i in range(0, len(encrypted), 100_000):
        dg.update(encrypted[i : i + 100_000])
    assert dg.file_digest().hex() == exp["digest_sha512"]
    for spec, (off, size), digest in zip(exp["chunks"], fc.chunk_specs(list(plan.chunk_sizes)), dg.chunk_digests):
        assert (spec["offset"], spec["size"], spec["digest_sha256"]) == (off, size, digest.hex())
        assert (
            encrypted[off : off + 32].hex() == spec["head"]
            and encrypted[off + size - 32 : off + size].hex() == spec["tail"]
        )
    # decrypt chunk by chunk
    dec = fc.FileDecryptor(h(exp["key"]), h(exp["nonce"]), len(encrypted))
    got = b"".join(dec.decrypt(encrypted[off : off + size]) for off, size in fc.chunk_specs(list(plan.chunk_sizes)))
    hdr = dec.finish()
    assert (hdr.file_name, hdr.file_extra) == (exp["decrypt"]["file_name"], exp["decrypt"]["file_extra"])
    assert hashlib.sha256(got).hexdigest() == exp["decrypt"]["content_sha256"]
    # tampering: the tag, then a ciphertext byte
    for pos in (len(encrypted) - 1, len(encrypted) // 2):
        bad = bytearray(encrypted)
        bad[pos] ^= 1
        d = fc.FileDecryptor(h(exp["key"]), h(exp["nonce"]), len(bad))
        d.decrypt(bytes(bad))
        with pytest.raises(fc.FileCryptoError):
            d.finish()
    assert exp["decrypt_tampered_tag"]["ok"] is False and exp["decrypt_tampered_ciphertext"]["ok"] is False


def test_decrypt_resplit():
    r = FILE["decrypt_resplit"]
    case = next(c for c in FILE["upload"] if c["id"] == "two-64k")
    exp = case["expected"]
    encrypted = _encrypt_streamed(case, content_of(case), 7777)
    dec = fc.FileDecryptor(h(exp["key"]), h(exp["nonce"]), len(encrypted))
    pos, out = 0, b""
    for cut in r["split_at"]:
        out += dec.decrypt(encrypted[pos:cut])
        pos = cut
    out += dec.decrypt(encrypted[pos:])
    dec.finish()
    assert hashlib.sha256(out).hexdigest() == r["content_sha256"]


def test_decryptor_rejects_bad_sizes():
    key, nonce = bytes(32), bytes(24)
    encrypted = fc.encrypt_file(key, nonce, fc.FileHeader("a").encode(), b"hello", 65536)
    d = fc.FileDecryptor(key, nonce, len(encrypted))
    d.decrypt(encrypted[:-1])
    with pytest.raises(fc.FileCryptoError):
        d.finish()
    d = fc.FileDecryptor(key, nonce, len(encrypted))
    with pytest.raises(fc.FileCryptoError):
        d.decrypt(encrypted + b"x")
    # wrong key: tag fails
    d = fc.FileDecryptor(bytes([1]) + key[1:], nonce, len(encrypted))
    try:
        d.decrypt(encrypted)
        d.finish()
        raise AssertionError("wrong key accepted")
    except fc.FileCryptoError:
        pass
    with pytest.raises(fc.FileCryptoError):
        fc.FileDecryptor(key, nonce, 10)


def test_dossier_file_anchor():
    """xftp-ntf.md §5.2 item 6: hello.txt with key R(1..32), nonce R(100..123)."""
    key, nonce = bytes(range(1, 33)), bytes(range(100, 124))
    header = fc.FileHeader("hello.txt").encode()
    assert header.hex() == "0968656c6c6f2e74787430"
    out = fc.encrypt_file(key, nonce, header, b"hello world\n", 65536)
    assert out[:32].hex() == "88d32df1b0b64495044c06a4f9b4bbe46e2b0431f2b05d22a0c3bede1fc3cf28"
    assert out[-16:].hex() == "9a6d205025f61679132133d588a6389c"
    assert hashlib.sha256(out).hexdigest() == "fe84c9bc234c516134184813f13819ca37d3829188dd9e7493f0c72c80eeaf67"


@settings(max_examples=40, deadline=None)
@given(
    st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255),
    st.binary(max_size=3000),
    st.integers(16, 5000),
)
def test_file_roundtrip_any_pieces(name, content, piece):
    key, nonce = bytes(range(32)), bytes(range(24))
    plan = fc.UploadPlan.for_file(name, len(content))
    e = fc.FileEncryptor(key, nonce, plan.header, len(content), plan.enc_size)
    encrypted = e.start() + b"".join(e.encrypt(content[i : i + piece]) for i in range(0, len(content), piece))
    encrypted += b"".join(e.finish())
    assert len(encrypted) == plan.enc_size
    d = fc.FileDecryptor(key, nonce, len(encrypted))
    out = b"".join(d.decrypt(encrypted[i : i + piece]) for i in range(0, len(encrypted), piece))
    assert d.finish() == fc.FileHeader(name) and out == content
