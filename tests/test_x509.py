"""Router certificates, key hash, chain validation and the signed session key
(sansio_smp/x509.py; smp.md §2.3, §2.4, §3.2, §8)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp import x509 as X
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey, key_pair, sha256
from sansio_smp.encoding import Reader, b64url_decode, b64url_encode, parse_all
from sansio_smp.errors import ParseError, RemoteProtocolError

DATA = Path(__file__).parent / "data"
FIX = DATA / "x509"
F = X.CertificateFailure
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)  # every fixture certificate is valid then
TEST_KEY_HASH = "LcJUMfVhwD8yxjAiSaDzzGF3-kLG4Uh0Fl_ZIjrRwjI="  # tests/SMPClient.hs testKeyHash
ED25519_KEY_HASH = "evk6yvqIaOtOVWfFhXQTdQRtlKeDy_4MXsJDYh2agys="
CA_SPKI_HASH = "zkA0Ikg2hhxBXxgcatIIjf8GfNmA4UBBRGurQDOtovY="  # smp.md §8: the wrong (SPKI) hash


def der(name: str) -> bytes:
    (d,) = X.pem_to_der_list((FIX / name).read_bytes())
    return d


def key(name: str) -> PrivateKey:
    return X.load_private_key_pem((FIX / name).read_bytes())


def det_random(seed: bytes):  # type: ignore[no-untyped-def]
    """Deterministic random_bytes: SHA-512 counter stream."""
    state = {"i": 0}

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha512(seed + state["i"].to_bytes(4, "big")).digest()
            state["i"] += 1
        return out[:n]

    return random_bytes


@pytest.fixture(scope="module")
def handshake() -> dict:
    return json.loads((DATA / "smp" / "handshake.json").read_text())


# ---------------------------------------------------------------- key hash and fixtures


def test_fixture_key_hashes() -> None:
    assert X.key_hash_b64url(der("ca.crt")) == TEST_KEY_HASH
    assert X.key_hash(der("ca.crt")) == b64url_decode(TEST_KEY_HASH)
    assert X.key_hash_b64url(der("ed25519/ca.crt")) == ED25519_KEY_HASH
    spki = cx509.load_der_x509_certificate(der("ca.crt")).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert b64url_encode(sha256(spki)) == CA_SPKI_HASH != TEST_KEY_HASH
    assert len(der("ca.crt")) == 442 and len(der("server.crt")) == 448


def test_handshake_json_fixture_hashes(handshake: dict) -> None:
    for fx in ("ed448", "ed25519"):
        f = handshake["fixtures"][fx]
        assert X.key_hash(bytes.fromhex(f["ca_der"])).hex() == f["key_hash"]
        assert X.key_hash_b64url(bytes.fromhex(f["ca_der"])) == f["key_hash_b64url"]


@pytest.mark.parametrize("sub", ["", "ed25519/"])
def test_builders_reproduce_the_reference_fixtures_byte_for_byte(sub: str) -> None:
    """Same keys, serials and times as the OpenSSL recipe (smp.md §2.3) → identical DER."""
    ca_der, srv_der = der(sub + "ca.crt"), der(sub + "server.crt")
    ca, srv = cx509.load_der_x509_certificate(ca_der), cx509.load_der_x509_certificate(srv_der)
    ca_key, srv_key = key(sub + "ca.key"), key(sub + "server.key")
    days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    built_ca = X.build_ca_certificate(ca_key, ca.serial_number, ca.not_valid_before_utc, days)
    assert built_ca == ca_der
    days = (srv.not_valid_after_utc - srv.not_valid_before_utc).days
    built_srv = X.build_server_certificate(
        srv_key, ca_key, ca_der, "localhost", srv.serial_number, srv.not_valid_before_utc, days
    )
    assert built_srv == srv_der


# ---------------------------------------------------------------- CryptoTests testValidateX509


def test_reference_validate_x509_cases() -> None:
    kh = b64url_decode(TEST_KEY_HASH)
    ca, server, ca2, server2, ss = (der(n) for n in ("ca.crt", "server.crt", "ca2.crt", "server2.crt", "ss.crt"))

    def check(chain: list[bytes]) -> F | None:
        try:
            X.validate_server_chain(chain, kh, NOW)
        except X.CertificateError as e:
            assert isinstance(e, RemoteProtocolError)
            return e.reason
        return None

    assert check([]) is F.EMPTY_CHAIN
    assert check([server, ca]) is None
    assert check([server2, ca2]) is F.UNKNOWN_CA  # key hash of ca2 ≠ testKeyHash
    assert check([server2, ca]) is F.INVALID_SIGNATURE  # same CA name, other key
    # ss.crt: issuer example.com is not the anchor's name and issuer == subject → SelfSigned
    assert check([ss, ca]) is F.SELF_SIGNED
    # the Ed25519 fixtures with their own key hash
    cc = X.validate_server_chain([der("ed25519/server.crt"), der("ed25519/ca.crt")], b64url_decode(ED25519_KEY_HASH), NOW)
    assert cc.kind is X.ChainKind.VALID and cc.leaf == der("ed25519/server.crt")


def test_x509_validate_returns_reference_reason_lists() -> None:
    ca, server, server2 = der("ca.crt"), der("server.crt"), der("server2.crt")
    assert X.x509_validate(ca, [server, ca], NOW) == ()
    assert X.x509_validate(ca, [server2, ca], NOW) == (F.INVALID_SIGNATURE,)
    assert X.x509_validate(ca, [], NOW) == (F.EMPTY_CHAIN,)
    assert X.x509_validate(ca, [b"\x30\x03\x02\x01\x01", ca], NOW) == (F.MALFORMED,)


def test_validity_period_at_injected_time() -> None:
    kh = X.key_hash(der("ca.crt"))
    chain = [der("server.crt"), der("ca.crt")]
    X.validate_server_chain(chain, kh, dt.datetime(2022, 1, 11, 16, 39, 46))  # naive = UTC, exact start
    with pytest.raises(X.CertificateError) as e:
        X.validate_server_chain(chain, kh, dt.datetime(2022, 1, 11, 16, 39, 45, tzinfo=dt.timezone.utc))
    assert e.value.reason is F.IN_FUTURE
    with pytest.raises(X.CertificateError) as e:
        X.validate_server_chain(chain, kh, dt.datetime(4759, 12, 8, 16, 39, 47, tzinfo=dt.timezone.utc))
    assert e.value.reason is F.EXPIRED
    # epoch seconds are accepted too
    X.validate_server_chain(chain, kh, 1_900_000_000)


@pytest.mark.parametrize(
    ("n", "kind", "ids"),
    [
        (0, X.ChainKind.EMPTY, None),
        (1, X.ChainKind.SELF, (0, 0, 0)),
        (2, X.ChainKind.VALID, (0, 1, 1)),
        (3, X.ChainKind.VALID, (0, 1, 2)),
        (4, X.ChainKind.VALID, (0, 1, 3)),
        (5, X.ChainKind.LONG, None),
        (6, X.ChainKind.LONG, None),
    ],
)
def test_chain_classification_table(n: int, kind: X.ChainKind, ids: tuple[int, int, int] | None) -> None:
    chain = [bytes([i]) * 3 for i in range(n)]
    cc = X.classify_chain(chain)
    assert cc.kind is kind
    if ids is not None:
        assert (cc.leaf, cc.id_cert, cc.ca_cert) == tuple(chain[i] for i in ids)
    if kind is X.ChainKind.VALID:
        assert X.chain_id_ca_certs(chain) == cc
    else:
        with pytest.raises(X.CertificateError) as e:
            X.chain_id_ca_certs(chain)
        assert e.value.reason is (F.AUTHORITY_TOO_DEEP if kind is X.ChainKind.LONG else F.EMPTY_CHAIN)


# ---------------------------------------------------------------- longer chains, CA constraints


def _name(cn: str) -> cx509.Name:
    return cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, pub, signer, *, ca: bool | None, path_len=None, key_usage=None, serial=1):  # type: ignore[no-untyped-def]
    b = (
        cx509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(dt.datetime(2024, 1, 1))
        .not_valid_after(dt.datetime(2040, 1, 1))
    )
    if ca is not None:
        b = b.add_extension(cx509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
    if key_usage is not None:
        b = b.add_extension(key_usage, critical=False)
    algo = hashes.SHA256() if isinstance(signer, ec.EllipticCurvePrivateKey) else None
    return b.sign(signer, algo).public_bytes(serialization.Encoding.DER)


def _ku(cert_sign: bool) -> cx509.KeyUsage:
    return cx509.KeyUsage(True, False, False, False, False, cert_sign, False, False, False)


@pytest.fixture(scope="module")
def keys() -> dict:
    rnd = det_random(b"chain keys")
    return {n: ed25519.Ed25519PrivateKey.from_private_bytes(rnd(32)) for n in ("root", "net", "id", "leaf", "x")}


def test_three_and_four_certificate_chains(keys: dict) -> None:
    k = keys
    root = _cert("root", "root", k["root"].public_key(), k["root"], ca=True)
    net = _cert("net", "root", k["net"].public_key(), k["root"], ca=True)
    idc = _cert("id", "net", k["id"].public_key(), k["net"], ca=True)
    idc_root = _cert("id", "root", k["id"].public_key(), k["root"], ca=True)
    leaf = _cert("leaf", "id", k["leaf"].public_key(), k["id"], ca=False)
    # 3: [leaf, id, operator CA]; the key hash is over id
    cc = X.validate_server_chain([leaf, idc_root, root], X.key_hash(idc_root), NOW)
    assert (cc.id_cert, cc.ca_cert) == (idc_root, root)
    # 4: [leaf, id, network, CA]
    cc = X.validate_server_chain([leaf, idc, net, root], X.key_hash(idc), NOW)
    assert cc.ca_cert == root
    # the hash must be over idCert (chain[1]), not the anchor
    with pytest.raises(X.CertificateError) as e:
        X.validate_server_chain([leaf, idc, net, root], X.key_hash(root), NOW)
    assert e.value.reason is F.UNKNOWN_CA
    # an intermediate without CA:true
    idc_not_ca = _cert("id", "root", k["id"].public_key(), k["root"], ca=False)
    assert X.x509_validate(root, [leaf, idc_not_ca, root], NOW) == (F.NOT_AN_AUTHORITY,)
    idc_no_bc = _cert("id", "root", k["id"].public_key(), k["root"], ca=None)
    assert X.x509_validate(root, [leaf, idc_no_bc, root], NOW) == (F.NOT_AN_AUTHORITY,)
    # keyUsage present without keyCertSign
    idc_no_sign = _cert("id", "root", k["id"].public_key(), k["root"], ca=True, key_usage=_ku(False))
    assert X.x509_validate(root, [leaf, idc_no_sign, root], NOW) == (F.NOT_ALLOWED_TO_SIGN,)
    idc_sign = _cert("id", "root", k["id"].public_key(), k["root"], ca=True, key_usage=_ku(True))
    assert X.x509_validate(root, [leaf, idc_sign, root], NOW) == ()
    # pathLen: net (level 1 in the walk) with pathLen 0 is too shallow
    net_pl0 = _cert("net", "root", k["net"].public_key(), k["root"], ca=True, path_len=0)
    assert X.x509_validate(root, [leaf, idc, net_pl0, root], NOW) == (F.AUTHORITY_TOO_DEEP,)
    net_pl1 = _cert("net", "root", k["net"].public_key(), k["root"], ca=True, path_len=1)
    assert X.x509_validate(root, [leaf, idc, net_pl1, root], NOW) == ()
    # issuer not found anywhere
    stray = _cert("leaf", "nobody", k["leaf"].public_key(), k["x"], ca=False)
    assert X.x509_validate(root, [stray, idc_root, root], NOW) == (F.UNKNOWN_CA,)
    # intermediate signed by the wrong key
    idc_bad = _cert("id", "root", k["id"].public_key(), k["x"], ca=True)
    assert X.x509_validate(root, [leaf, idc_bad, root], NOW) == (F.INVALID_SIGNATURE,)
    # the walk reorders: issuer found anywhere later in the chain
    assert X.x509_validate(root, [leaf, root, net, idc], NOW) == ()


def test_non_eddsa_signatures_are_refused(keys: dict) -> None:
    ca = der("ca.crt")
    ec_key = ec.derive_private_key(12345, ec.SECP256R1())
    # issuer name = the anchor's, but ECDSA-signed: the anchor's Ed448 key cannot verify it
    leaf = (
        cx509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(cx509.load_der_x509_certificate(ca).subject)
        .public_key(ec_key.public_key())
        .serial_number(7)
        .not_valid_before(dt.datetime(2024, 1, 1))
        .not_valid_after(dt.datetime(2040, 1, 1))
        .sign(ec_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    assert X.x509_validate(ca, [leaf, ca], NOW) == (F.INVALID_SIGNATURE,)
    # an Ed25519-signed cert checked against an Ed448 issuer of the same name
    leaf2 = (
        cx509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(cx509.load_der_x509_certificate(ca).subject)
        .public_key(keys["leaf"].public_key())
        .serial_number(8)
        .not_valid_before(dt.datetime(2024, 1, 1))
        .not_valid_after(dt.datetime(2040, 1, 1))
        .sign(keys["x"], None)
        .public_bytes(serialization.Encoding.DER)
    )
    assert X.x509_validate(ca, [leaf2, ca], NOW) == (F.INVALID_SIGNATURE,)


def test_leaf_must_be_v3() -> None:
    """Drop the [0] version field of the leaf's TBSCertificate: a v1 certificate."""
    leaf = der("server.crt")
    outer = X._tlv(leaf, 0, len(leaf))
    tbs = X._tlv(leaf, outer.body, outer.end)
    version = X._tlv(leaf, tbs.body, tbs.end)
    assert version.tag == 0xA0
    v1_tbs = X._der(0x30, leaf[version.end : tbs.end])
    v1 = X._der(0x30, v1_tbs + leaf[tbs.end : outer.end])
    assert cx509.load_der_x509_certificate(v1).version is cx509.Version.v1
    assert X.x509_validate(der("ca.crt"), [v1, der("ca.crt")], NOW) == (F.LEAF_NOT_V3,)


def test_client_service_chains() -> None:
    """validateClientCertificate (smp.md §2.6): empty → None, self-signed alone is fine."""
    assert X.validate_client_chain([], NOW) is None
    ident = X.generate_router_identity("svc", det_random(b"svc"), NOW)
    assert X.validate_client_chain([ident.ca_cert_der], NOW).kind is X.ChainKind.SELF
    assert X.validate_client_chain(ident.chain_der, NOW).kind is X.ChainKind.VALID
    with pytest.raises(X.CertificateError) as e:
        X.validate_client_chain([der("ss.crt")], NOW)  # ECDSA self-signature
    assert e.value.reason is F.INVALID_SIGNATURE
    with pytest.raises(X.CertificateError) as e:
        X.validate_client_chain([ident.ca_cert_der] * 5, NOW)
    assert e.value.reason is F.AUTHORITY_TOO_DEEP


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("alg", [KeyAlgorithm.ED25519, KeyAlgorithm.ED448])
def test_generate_router_identity(alg: KeyAlgorithm) -> None:
    ident = X.generate_router_identity("smp.example.com", det_random(b"id" + alg.value.encode()), NOW, alg)
    again = X.generate_router_identity("smp.example.com", det_random(b"id" + alg.value.encode()), NOW, alg)
    assert ident == again  # fully determined by the injected randomness and time
    assert ident.ca_key.alg is alg and ident.server_key.alg is alg
    assert ident.ca_key != ident.server_key
    ca = cx509.load_der_x509_certificate(ident.ca_cert_der)
    srv = cx509.load_der_x509_certificate(ident.server_cert_der)
    assert ca.subject.rfc4514_string() == "O=SimpleX,CN=SMP server CA" and ca.issuer == ca.subject
    bc = ca.extensions.get_extension_for_class(cx509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ski = ca.extensions.get_extension_for_class(cx509.SubjectKeyIdentifier).value
    assert ca.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 999999
    assert ca.not_valid_before_utc == NOW and 0 < ca.serial_number < 2**159
    assert srv.subject.rfc4514_string() == "CN=smp.example.com" and srv.issuer == ca.subject
    assert not srv.extensions.get_extension_for_class(cx509.BasicConstraints).value.ca
    ku = srv.extensions.get_extension_for_class(cx509.KeyUsage).value
    assert ku.digital_signature and ku.content_commitment and ku.key_agreement and not ku.key_cert_sign
    eku = srv.extensions.get_extension_for_class(cx509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert srv.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    # it validates as a router chain, under its own key hash only
    assert X.validate_server_chain(ident.chain_der, ident.key_hash, NOW).leaf == ident.server_cert_der
    assert ident.fingerprint == X.key_hash_b64url(ident.ca_cert_der)
    with pytest.raises(X.CertificateError):
        X.validate_server_chain(ident.chain_der, X.key_hash(der("ca.crt")), NOW)
    # PEM forms round-trip
    assert X.pem_to_der_list(ident.chain_pem()) == ident.chain_der
    assert X.load_private_key_pem(ident.server_key_pem()) == ident.server_key
    loaded = serialization.load_pem_private_key(ident.ca_key_pem(), None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey if alg is KeyAlgorithm.ED25519 else ed448.Ed448PrivateKey)


def test_identity_signs_session_keys_with_the_online_key() -> None:
    ident = X.generate_router_identity("h", det_random(b"sk"), NOW)
    pub, _ = key_pair(KeyAlgorithm.X25519, det_random(b"session"))
    assert ident.chain == tuple(ident.chain_der)
    ccpk = ident.cert_chain_pub_key(pub)
    assert ccpk.signed_key == ident.sign_session_key(pub) == X.sign_session_key(ident.server_key, pub)
    assert len(ccpk.signed_key) == 122
    assert ccpk.verify(ident.server_cert_der, ident.key_hash) == pub


def test_online_certificate_regeneration_keeps_identity() -> None:
    """``smp-server cert``: a new online key/cert, same CA and key hash."""
    ident = X.generate_router_identity("a.example", det_random(b"init"), NOW, KeyAlgorithm.ED448)
    online = X.generate_online_credential(ident.ca_cert_der, ident.ca_key, "b.example", det_random(b"cert"), NOW)
    renewed = ident.with_online(online)
    assert renewed.key_hash == ident.key_hash and renewed.server_key != ident.server_key
    assert online.key.alg is KeyAlgorithm.ED448
    X.validate_server_chain(renewed.chain_der, ident.key_hash, NOW)
    other = X.generate_router_identity("a.example", det_random(b"other"), NOW, KeyAlgorithm.ED448)
    with pytest.raises(X.CertificateError) as e:  # online cert from another CA of the same name
        X.validate_server_chain([other.server_cert_der, ident.ca_cert_der], ident.key_hash, NOW)
    assert e.value.reason is F.INVALID_SIGNATURE


def test_random_serial_is_positive_159_bit() -> None:
    assert X.random_serial(lambda n: b"\xff" * n) == 2**159 - 1
    assert X.random_serial(lambda n: b"\x00" * n) == 1


# ---------------------------------------------------------------- signed session key (§3.2)


ROUTER_HELLOS = ["ed448-6-18", "ed448-8-17", "ed25519-6-18"]


def _hello(handshake: dict, hid: str) -> dict:
    return next(h for h in handshake["router_hello"] if h["id"] == hid)


@pytest.mark.parametrize("hid", ROUTER_HELLOS)
def test_sign_session_key_matches_vectors(handshake: dict, hid: str) -> None:
    h = _hello(handshake, hid)
    sub = "" if h["fixture"] == "ed448" else "ed25519/"
    leaf_key = key(sub + "server.key")
    session_pub = PublicKey.from_spki(bytes.fromhex(h["inputs"]["router_session_key"]["spki"]))
    signed = X.sign_session_key(leaf_key, session_pub)
    assert signed.hex() == h["expected"]["signed_key"]
    assert len(signed) == h["expected"]["signed_key_length"] == (173 if sub == "" else 122)
    parsed = X.parse_signed_key(signed)
    extract = h["expected"]["smp_web_extractSignedKey"]
    assert parsed.object_der.hex() == extract["objectDer"] and len(parsed.object_der) == 46
    assert parsed.signature.hex() == extract["signature"]
    assert parsed.spki_der == session_pub.spki()


@pytest.mark.parametrize("hid", ROUTER_HELLOS)
def test_cert_chain_pub_key_in_router_hello(handshake: dict, hid: str) -> None:
    """The hello payload is ``w16 min ‖ w16 max ‖ sb(sessionId) ‖ CertChainPubKey``."""
    h = _hello(handshake, hid)
    fx = handshake["fixtures"][h["fixture"]]
    leaf, ca = bytes.fromhex(fx["leaf_der"]), bytes.fromhex(fx["ca_der"])
    sub = "" if h["fixture"] == "ed448" else "ed25519/"
    assert (leaf, ca) == (der(sub + "server.crt"), der(sub + "ca.crt"))
    payload = bytes.fromhex(h["expected"]["payload"])
    session_pub = PublicKey.from_spki(bytes.fromhex(h["inputs"]["router_session_key"]["spki"]))
    made = X.CertChainPubKey.make([leaf, ca], key(sub + "server.key"), session_pub)
    tail = payload[4 + 1 + 32 :]
    assert made.encode() == tail
    parsed = parse_all(tail, X.CertChainPubKey.parse)
    assert parsed == made and list(parsed.chain) == [leaf, ca]
    assert parsed.verify(leaf, bytes.fromhex(fx["key_hash"])) == session_pub
    assert X.verify_session_key(leaf, parsed.signed_key) == session_pub


def test_signed_key_wrong_signer_or_type_is_refused(handshake: dict) -> None:
    leaf, ca = der("server.crt"), der("ca.crt")
    session_pub, _ = key_pair(KeyAlgorithm.X25519, det_random(b"x"))
    good = X.sign_session_key(key("server.key"), session_pub)

    def reason(leaf_der: bytes, signed: bytes, alg: KeyAlgorithm = KeyAlgorithm.X25519) -> F:
        with pytest.raises(X.CertificateError) as e:
            X.verify_session_key(leaf_der, signed, alg)
        return e.value.reason

    # signed by the CA (offline) key, not the online one
    assert reason(leaf, X.sign_session_key(key("ca.key"), session_pub)) is F.INVALID_SESSION_KEY
    # verified against another leaf
    assert reason(der("server2.crt"), good) is F.INVALID_SESSION_KEY
    # a flipped signature bit
    bad = bytearray(good)
    bad[-1] ^= 1
    assert reason(leaf, bytes(bad)) is F.INVALID_SESSION_KEY
    # an Ed25519 key where an X25519 key is expected (and the other way round)
    ed_pub, _ = key_pair(KeyAlgorithm.ED25519, det_random(b"e"))
    signed_ed = X.sign_session_key(key("server.key"), ed_pub)
    assert reason(leaf, signed_ed) is F.INVALID_SESSION_KEY
    assert X.verify_session_key(leaf, signed_ed, KeyAlgorithm.ED25519) == ed_pub
    assert reason(leaf, good, KeyAlgorithm.ED25519) is F.INVALID_SESSION_KEY
    # algorithm identifier says Ed25519 but the leaf is Ed448
    swapped = good.replace(bytes.fromhex("300506032b6571"), bytes.fromhex("300506032b6570"))
    assert swapped != good and reason(leaf, swapped) is F.INVALID_SESSION_KEY
    # a bare SPKI object (no wrapping SEQUENCE) does not parse in the reference
    spki = session_pub.spki()
    sig = key("server.key").sign(spki)
    bare = X._der(0x30, spki + X._der(0x30, X._der(0x06, X.OID_ED448)) + X._der(0x03, b"\0" + sig))
    with pytest.raises(ParseError):
        X.parse_signed_key(bare)
    assert reason(leaf, bare) is F.INVALID_SESSION_KEY
    # hello chain checks: key hash and length
    ccpk = X.CertChainPubKey((leaf, ca), good)
    with pytest.raises(X.CertificateError) as e:
        ccpk.verify(leaf, X.key_hash(der("ca2.crt")))
    assert e.value.reason is F.UNKNOWN_CA
    with pytest.raises(X.CertificateError) as e:
        X.CertChainPubKey((ca,), good).verify(leaf, X.key_hash(ca))
    assert e.value.reason is F.EMPTY_CHAIN
    assert ccpk.verify(leaf, X.key_hash(ca)) == session_pub


def test_cert_chain_pub_key_parse_rejects_bad_parts() -> None:
    leaf, ca = der("server.crt"), der("ca.crt")
    session_pub, _ = key_pair(KeyAlgorithm.X25519, det_random(b"y"))
    good = X.CertChainPubKey.make([leaf, ca], key("server.key"), session_pub).encode()
    assert parse_all(good, X.CertChainPubKey.parse).chain == (leaf, ca)
    with pytest.raises(ParseError):  # zero certificates
        parse_all(b"\x00" + good[1:], X.CertChainPubKey.parse)
    with pytest.raises(ParseError):  # a certificate that does not decode
        X.CertChainPubKey.parse(Reader(X.CertChainPubKey((b"\x30\x00", ca), b"").encode()))
    with pytest.raises(ParseError):  # truncated
        parse_all(good[:-1], X.CertChainPubKey.parse)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_are_total(data: bytes) -> None:
    try:
        X.CertChainPubKey.parse(Reader(data))
    except ParseError:
        pass
    try:
        X.parse_signed_key(data)
    except ParseError:
        pass
    try:
        X.verify_session_key(der("server.crt"), data)
    except X.CertificateError:
        pass
    out = X.x509_validate(der("ca.crt"), [data, der("ca.crt")], NOW)
    assert out and all(isinstance(r, F) for r in out)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=172), st.integers(min_value=1, max_value=255))
def test_any_mutated_signed_key_is_refused(pos: int, xor: int) -> None:
    session_pub = PublicKey(KeyAlgorithm.X25519, bytes(range(32)))
    good = bytearray(X.sign_session_key(key("server.key"), session_pub))
    good[pos] ^= xor
    with pytest.raises(X.CertificateError):
        X.verify_session_key(der("server.crt"), bytes(good))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=447), st.integers(min_value=1, max_value=255))
def test_any_mutated_leaf_fails_validation(pos: int, xor: int) -> None:
    leaf = bytearray(der("server.crt"))
    leaf[pos] ^= xor
    assert X.x509_validate(der("ca.crt"), [bytes(leaf), der("ca.crt")], NOW) != ()
