"""Router certificates, the address key hash and the signed session key (smp.md §2.3, §2.4, §3.2).

Pure: no I/O, no clock, no randomness of its own — ``now`` and ``random_bytes`` are injected.

* Identity generation as ``smp-server init`` does it (§2.3): an offline CA certificate
  (CN "SMP server CA", O "SimpleX", critical ``CA:true``, SKI/AKI, 999999 days) and an online
  server certificate (CN = host, ``CA:FALSE``, keyUsage, serverAuth) signed by it. Ed25519 (the
  CLI default) or Ed448 (the test fixtures). With the same keys, serial and time this reproduces
  the reference's OpenSSL-made fixtures byte for byte (Ed25519/Ed448 signatures are deterministic).
* :func:`key_hash`: SHA-256 over the whole DER of the identity certificate (not its SPKI).
* :func:`chain_id_ca_certs` / :func:`validate_server_chain` / :func:`x509_validate`: the client's
  check of a router chain (reference ``validateCertificateChain`` and crypton-x509-validation's
  ``defaultChecks`` without the host-name check), with typed failures.
* :func:`sign_session_key` / :func:`verify_session_key` and :class:`CertChainPubKey`: the
  X.509 ``SignedExact`` session key of the router hello (§3.2) and its wire encoding.
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import warnings
from typing import Callable, Sequence, Union

import attrs
from cryptography import x509 as _x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .crypto import KeyAlgorithm, PrivateKey, PublicKey, sha256
from .encoding import Reader, b64url_encode, lg, ne
from .errors import LocalProtocolError, ParseError, RemoteProtocolError

RandomBytes = Callable[[int], bytes]
Instant = Union[_dt.datetime, int, float]

CA_COMMON_NAME = "SMP server CA"
CA_ORGANIZATION = "SimpleX"
DEFAULT_VALIDITY_DAYS = 999999
SERIAL_SIZE = 20  # OpenSSL's random serials: 20 bytes, top bit clear

#: OID contents (without tag/length) of the two signature algorithms the reference accepts.
OID_ED25519 = bytes.fromhex("2b6570")  # 1.3.101.112
OID_ED448 = bytes.fromhex("2b6571")  # 1.3.101.113
_SIG_OID = {KeyAlgorithm.ED25519: OID_ED25519, KeyAlgorithm.ED448: OID_ED448}
_OID_SIG = {v: k for k, v in _SIG_OID.items()}
_SIG_OID_DOTTED = {"1.3.101.112": KeyAlgorithm.ED25519, "1.3.101.113": KeyAlgorithm.ED448}


# ---------------------------------------------------------------- errors


class CertificateFailure(enum.Enum):
    """Why a chain or a signed key was refused; names follow crypton-x509-validation's
    ``FailedReason`` (smp.md §2.4) plus ``MALFORMED`` and ``INVALID_SESSION_KEY``."""

    EMPTY_CHAIN = "EmptyChain"  # 0 certificates, or 1 where a CA is required (CCSelf)
    AUTHORITY_TOO_DEEP = "AuthorityTooDeep"  # ≥ 5 certificates, or a CA pathLen exceeded
    UNKNOWN_CA = "UnknownCA"  # key hash mismatch, or no issuer found
    SELF_SIGNED = "SelfSigned"  # a self-signed certificate that is not the anchor
    INVALID_SIGNATURE = "InvalidSignature"
    NOT_AN_AUTHORITY = "NotAnAuthority"
    NOT_ALLOWED_TO_SIGN = "NotAllowedToSign"
    EXPIRED = "Expired"
    IN_FUTURE = "InFuture"
    LEAF_NOT_V3 = "LeafNotV3"
    MALFORMED = "Malformed"  # DER that does not decode as a certificate
    INVALID_SESSION_KEY = "InvalidSessionKey"  # signed key: bad algorithm/key type/signature


class CertificateError(RemoteProtocolError):
    """A router (or service) certificate chain or signed key was refused (smp.md §2.4, §3.2).

    ``reason`` is the first failure, ``reasons`` all of them (the reference stops at the first
    failing check, except that one CA check may report several)."""

    def __init__(
        self,
        reason: CertificateFailure,
        detail: str = "",
        reasons: Sequence[CertificateFailure] | None = None,
    ) -> None:
        self.reason = reason
        self.reasons = tuple(reasons) if reasons else (reason,)
        self.detail = detail
        super().__init__(f"{reason.value}{': ' + detail if detail else ''}")


# ---------------------------------------------------------------- a tiny strict DER reader


@attrs.frozen
class _Tlv:
    tag: int
    start: int  # offset of the tag byte
    body: int  # offset of the content
    end: int  # offset after the content


def _tlv(data: bytes, pos: int, limit: int) -> _Tlv:
    """One DER TLV at ``pos`` that must end by ``limit``; only low tag numbers, definite
    minimal lengths. Raises :class:`ParseError`."""
    if pos + 2 > limit:
        raise ParseError("DER: truncated header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ParseError("DER: high tag numbers are not supported")
    first = data[pos + 1]
    body = pos + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise ParseError("DER: indefinite length")
    else:
        n = first & 0x7F
        if n > 4 or body + n > limit:
            raise ParseError("DER: bad length of length")
        raw = data[body : body + n]
        length = int.from_bytes(raw, "big")
        if raw[0] == 0 or length < 0x80:
            raise ParseError("DER: non-minimal length")
        body += n
    end = body + length
    if end > limit:
        raise ParseError("DER: content runs past its container")
    return _Tlv(tag, pos, body, end)


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        head = bytes((tag, n))
    else:
        nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes((tag, 0x80 | len(nb))) + nb
    return head + content


# ---------------------------------------------------------------- time and keys


def _utc(now: Instant) -> _dt.datetime:
    """An aware UTC datetime (seconds precision) from a datetime (naive = UTC) or epoch seconds."""
    if isinstance(now, _dt.datetime):
        t = now if now.tzinfo is not None else now.replace(tzinfo=_dt.timezone.utc)
        t = t.astimezone(_dt.timezone.utc)
    elif isinstance(now, (int, float)) and not isinstance(now, bool):
        t = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    else:
        raise LocalProtocolError(f"not a time: {now!r}")
    return t.replace(microsecond=0)


def _sign_key_obj(key: PrivateKey):  # type: ignore[no-untyped-def]
    if key.alg is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(key.raw)
    if key.alg is KeyAlgorithm.ED448:
        return ed448.Ed448PrivateKey.from_private_bytes(key.raw)
    raise LocalProtocolError("certificates are signed with Ed25519 or Ed448 keys only")


def random_serial(random_bytes: RandomBytes) -> int:
    """A positive 159-bit serial number from 20 injected bytes (as OpenSSL makes them)."""
    raw = bytearray(random_bytes(SERIAL_SIZE))
    if len(raw) != SERIAL_SIZE:
        raise LocalProtocolError("random_bytes returned the wrong length")
    raw[0] &= 0x7F
    return int.from_bytes(raw, "big") or 1


# ---------------------------------------------------------------- generation (smp.md §2.3)


def build_ca_certificate(
    ca_key: PrivateKey,
    serial: int,
    not_before: Instant,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> bytes:
    """The offline identity certificate (``openssl req -x509`` with the reference's
    ``openssl_ca.conf``): self-signed, SKI, AKI (keyid), critical ``CA:true``. Returns DER."""
    key = _sign_key_obj(ca_key)
    pub = key.public_key()
    start = _utc(not_before)
    name = _x509.Name(
        [
            _x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
            _x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION),
        ]
    )
    ski = _x509.SubjectKeyIdentifier.from_public_key(pub)
    cert = (
        _x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + _dt.timedelta(days=days))
        .add_extension(ski, critical=False)
        .add_extension(_x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(_x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def build_server_certificate(
    server_key: PrivateKey,
    ca_key: PrivateKey,
    ca_cert_der: bytes,
    common_name: str,
    serial: int,
    not_before: Instant,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> bytes:
    """The online certificate (``openssl x509 -req`` with ``openssl_server.conf``): CN = host,
    ``CA:FALSE``, keyUsage digitalSignature/nonRepudiation/keyAgreement, serverAuth, SKI, AKI
    (keyid of the CA). Returns DER."""
    if not common_name:
        raise LocalProtocolError("the online certificate needs a common name (host)")
    ca = _load_cert_or_local_error(ca_cert_der)
    signer = _sign_key_obj(ca_key)
    pub = _sign_key_obj(server_key).public_key()
    start = _utc(not_before)
    try:
        ca_ski = ca.extensions.get_extension_for_class(_x509.SubjectKeyIdentifier).value
        aki = _x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except _x509.ExtensionNotFound:
        aki = _x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key())
    cert = (
        _x509.CertificateBuilder()
        .subject_name(_x509.Name([_x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + _dt.timedelta(days=days))
        .add_extension(_x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(
            _x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
        .add_extension(_x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(aki, critical=False)
        .sign(signer, None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


@attrs.frozen
class OnlineCredential:
    """The online (TLS) certificate and its key: what ``smp-server cert`` regenerates."""

    cert_der: bytes
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return der_to_pem(self.cert_der)

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)


@attrs.frozen
class RouterIdentity:
    """A router's certificates and keys as ``smp-server init`` writes them (smp.md §2.3):
    ``ca.crt``/``ca.key`` (offline), ``server.crt``/``server.key`` (online), ``fingerprint``."""

    ca_cert_der: bytes
    ca_key: PrivateKey
    server_cert_der: bytes
    server_key: PrivateKey

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.ca_cert_der)

    @property
    def fingerprint(self) -> str:
        """The ``fingerprint`` file / address form: b64url (with ``=``) of :attr:`key_hash`."""
        return b64url_encode(self.key_hash)

    @property
    def chain_der(self) -> list[bytes]:
        """The TLS chain the router presents: ``[server.crt, ca.crt]``."""
        return [self.server_cert_der, self.ca_cert_der]

    @property
    def chain(self) -> tuple[bytes, ...]:
        """:attr:`chain_der` as a tuple (the ``connection.RouterIdentity`` protocol)."""
        return (self.server_cert_der, self.ca_cert_der)

    def sign_session_key(self, public_key: PublicKey) -> bytes:
        """The hello's signed session key, signed with the online key (:func:`sign_session_key`)."""
        return sign_session_key(self.server_key, public_key)

    def cert_chain_pub_key(self, public_key: PublicKey) -> "CertChainPubKey":
        return CertChainPubKey(self.chain, self.sign_session_key(public_key))

    def chain_pem(self) -> bytes:
        return der_to_pem(self.server_cert_der) + der_to_pem(self.ca_cert_der)

    def ca_cert_pem(self) -> bytes:
        return der_to_pem(self.ca_cert_der)

    def server_cert_pem(self) -> bytes:
        return der_to_pem(self.server_cert_der)

    def ca_key_pem(self) -> bytes:
        return private_key_pem(self.ca_key)

    def server_key_pem(self) -> bytes:
        return private_key_pem(self.server_key)

    def with_online(self, online: OnlineCredential) -> "RouterIdentity":
        return attrs.evolve(self, server_cert_der=online.cert_der, server_key=online.key)


def _sign_alg(alg: KeyAlgorithm) -> KeyAlgorithm:
    if alg not in (KeyAlgorithm.ED25519, KeyAlgorithm.ED448):
        raise LocalProtocolError("router certificates use Ed25519 or Ed448")
    return alg


def generate_online_credential(
    ca_cert_der: bytes,
    ca_key: PrivateKey,
    common_name: str,
    random_bytes: RandomBytes,
    now: Instant,
    alg: KeyAlgorithm | None = None,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> OnlineCredential:
    """A fresh online key and certificate under an existing identity (``smp-server cert``,
    reference ``genOnline``); ``alg`` defaults to the CA key's algorithm."""
    key = PrivateKey.generate(_sign_alg(alg or ca_key.alg), random_bytes)
    serial = random_serial(random_bytes)
    return OnlineCredential(build_server_certificate(key, ca_key, ca_cert_der, common_name, serial, now, days), key)


def generate_router_identity(
    common_name: str,
    random_bytes: RandomBytes,
    now: Instant,
    alg: KeyAlgorithm = KeyAlgorithm.ED25519,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> RouterIdentity:
    """``smp-server init``: a new offline CA and an online certificate for ``common_name``
    (FQDN or IP). Keys are the raw bytes from ``random_bytes`` (32 for Ed25519, 57 for Ed448)."""
    ca_key = PrivateKey.generate(_sign_alg(alg), random_bytes)
    ca_der = build_ca_certificate(ca_key, random_serial(random_bytes), now, days)
    online = generate_online_credential(ca_der, ca_key, common_name, random_bytes, now, alg, days)
    return RouterIdentity(ca_der, ca_key, online.cert_der, online.key)


# ---------------------------------------------------------------- PEM helpers


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode("ascii")


def pem_to_der_list(pem: bytes, label: str = "CERTIFICATE") -> list[bytes]:
    """Every ``label`` block of a PEM file, in order, as DER. Malformed input → ParseError."""
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError as e:
        raise ParseError("PEM: not ASCII") from e
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    out: list[bytes] = []
    pos = 0
    while True:
        i = text.find(begin, pos)
        if i < 0:
            break
        j = text.find(end, i)
        if j < 0:
            raise ParseError("PEM: missing END line")
        body = "".join(text[i + len(begin) : j].split())
        try:
            out.append(base64.b64decode(body, validate=True))
        except ValueError as e:
            raise ParseError("PEM: bad base64") from e
        pos = j + len(end)
    return out


def private_key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), as ``openssl genpkey`` writes it."""
    return der_to_pem(key.pkcs8(), "PRIVATE KEY")


def load_private_key_pem(pem: bytes) -> PrivateKey:
    """The first PKCS#8 ``PRIVATE KEY`` of a PEM file (Ed25519/Ed448/X25519/X448)."""
    ders = pem_to_der_list(pem, "PRIVATE KEY")
    if not ders:
        raise ParseError("PEM: no PRIVATE KEY block")
    return PrivateKey.from_pkcs8(ders[0])


# ---------------------------------------------------------------- key hash


def key_hash(id_cert_der: bytes) -> bytes:
    """SHA-256 of the whole DER of the identity certificate (smp.md §2.3) — 32 bytes."""
    return sha256(id_cert_der)


def key_hash_b64url(id_cert_der: bytes) -> str:
    """:func:`key_hash` as the address/``fingerprint`` text (b64url with ``=``)."""
    return b64url_encode(key_hash(id_cert_der))


# ---------------------------------------------------------------- parsed certificates


@attrs.frozen(eq=False)
class _Cert:
    der: bytes
    obj: _x509.Certificate
    issuer_raw: bytes
    subject_raw: bytes
    version: int  # 0-based as in the DER (2 = v3)


def _tbs_names(der: bytes) -> tuple[int, bytes, bytes]:
    """(version, raw issuer DER, raw subject DER) straight from the TBSCertificate bytes, so
    name comparison is exact structural equality as in crypton."""
    outer = _tlv(der, 0, len(der))
    if outer.tag != 0x30 or outer.end != len(der):
        raise ParseError("certificate: not one SEQUENCE")
    tbs = _tlv(der, outer.body, outer.end)
    if tbs.tag != 0x30:
        raise ParseError("certificate: no TBSCertificate")
    pos, version = tbs.body, 0
    first = _tlv(der, pos, tbs.end)
    if first.tag == 0xA0:
        v = _tlv(der, first.body, first.end)
        if v.tag != 0x02 or v.end != first.end or v.end - v.body != 1:
            raise ParseError("certificate: bad version")
        version = der[v.body]
        pos = first.end
    fields = []
    for _ in range(5):  # serial, signature, issuer, validity, subject
        t = _tlv(der, pos, tbs.end)
        fields.append(t)
        pos = t.end
    issuer, subject = fields[2], fields[4]
    if issuer.tag != 0x30 or subject.tag != 0x30:
        raise ParseError("certificate: bad names")
    alg = _tlv(der, tbs.end, outer.end)
    bits = _tlv(der, alg.end, outer.end)
    if alg.tag != 0x30 or bits.tag != 0x03 or bits.end != outer.end:
        raise ParseError("certificate: bad signature fields")
    if bits.end == bits.body or der[bits.body] != 0:
        raise ParseError("certificate: signature BIT STRING with unused bits")
    return version, der[issuer.start : issuer.end], der[subject.start : subject.end]


def _load_cert(der: bytes) -> _Cert:
    """Parse a certificate; anything undecodable is ``CertificateError(MALFORMED)``."""
    try:
        der = bytes(der)
        version, issuer_raw, subject_raw = _tbs_names(der)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. non-positive serials: still decodable
            obj = _x509.load_der_x509_certificate(der)
        # force the lazily parsed parts now, so later accesses cannot raise
        obj.extensions  # noqa: B018
        obj.not_valid_before_utc  # noqa: B018
        obj.not_valid_after_utc  # noqa: B018
    except Exception as e:  # noqa: BLE001 - cryptography raises ValueError, InvalidVersion, ...
        raise CertificateError(CertificateFailure.MALFORMED, str(e)) from e
    return _Cert(der, obj, issuer_raw, subject_raw, version)


def _load_cert_or_local_error(der: bytes) -> _x509.Certificate:
    try:
        return _load_cert(der).obj
    except CertificateError as e:
        raise LocalProtocolError(f"not a certificate: {e}") from e


def certificate_public_key(cert_der: bytes) -> PublicKey:
    """The certificate's subject public key as a :class:`~sansio_smp.crypto.PublicKey`
    (Ed25519/Ed448/X25519/X448), else ``CertificateError``."""
    cert = _load_cert(cert_der)
    try:
        spki = cert.obj.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return PublicKey.from_spki(spki)
    except (ParseError, ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(CertificateFailure.INVALID_SIGNATURE, "unsupported certificate key") from e


# ---------------------------------------------------------------- chains (smp.md §2.3, §2.4)


class ChainKind(enum.Enum):
    """Reference ``ChainCertificates`` constructors (``chainIdCaCerts``)."""

    EMPTY = "CCEmpty"
    SELF = "CCSelf"
    VALID = "CCValid"
    LONG = "CCLong"


@attrs.frozen
class ChainCertificates:
    """A classified chain (DER, leaf first): ``id_cert`` is hashed into the key hash,
    ``ca_cert`` is the only trust anchor. For ``SELF`` all three are the one certificate."""

    kind: ChainKind
    leaf: bytes | None = attrs.field(default=None, repr=False)
    id_cert: bytes | None = attrs.field(default=None, repr=False)
    ca_cert: bytes | None = attrs.field(default=None, repr=False)


def classify_chain(chain: Sequence[bytes]) -> ChainCertificates:
    """``chainIdCaCerts`` (smp.md §2.3 table); total."""
    n = len(chain)
    if n == 0:
        return ChainCertificates(ChainKind.EMPTY)
    if n == 1:
        return ChainCertificates(ChainKind.SELF, chain[0], chain[0], chain[0])
    if n == 2:
        return ChainCertificates(ChainKind.VALID, chain[0], chain[1], chain[1])
    if n == 3:
        return ChainCertificates(ChainKind.VALID, chain[0], chain[1], chain[2])
    if n == 4:
        return ChainCertificates(ChainKind.VALID, chain[0], chain[1], chain[3])
    return ChainCertificates(ChainKind.LONG)


def chain_id_ca_certs(chain: Sequence[bytes]) -> ChainCertificates:
    """A router chain as a client accepts it: 2–4 certificates, else ``CertificateError``
    (``EMPTY_CHAIN`` for 0 or 1, ``AUTHORITY_TOO_DEEP`` for ≥ 5)."""
    cc = classify_chain(chain)
    if cc.kind in (ChainKind.EMPTY, ChainKind.SELF):
        raise CertificateError(CertificateFailure.EMPTY_CHAIN, f"{len(chain)} certificate(s)")
    if cc.kind is ChainKind.LONG:
        raise CertificateError(CertificateFailure.AUTHORITY_TOO_DEEP, f"{len(chain)} certificates")
    return cc


def _check_signature(signed: _Cert, signer: _Cert) -> tuple[CertificateFailure, ...]:
    """crypton ``verifySignedSignature`` restricted to Ed25519/Ed448 (the outer signatureAlgorithm
    chooses the scheme; the signer's key must be of that type)."""
    alg = _SIG_OID_DOTTED.get(signed.obj.signature_algorithm_oid.dotted_string)
    try:
        key = signer.obj.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return (CertificateFailure.INVALID_SIGNATURE,)
    if alg is KeyAlgorithm.ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
        pass
    elif alg is KeyAlgorithm.ED448 and isinstance(key, ed448.Ed448PublicKey):
        pass
    else:
        return (CertificateFailure.INVALID_SIGNATURE,)
    try:
        key.verify(signed.obj.signature, signed.obj.tbs_certificate_bytes)
    except (InvalidSignature, ValueError):
        return (CertificateFailure.INVALID_SIGNATURE,)
    return ()


def _check_time(cert: _Cert, now: _dt.datetime) -> tuple[CertificateFailure, ...]:
    if now < cert.obj.not_valid_before_utc:
        return (CertificateFailure.IN_FUTURE,)
    if now > cert.obj.not_valid_after_utc:
        return (CertificateFailure.EXPIRED,)
    return ()


def _check_ca(level: int, cert: _Cert) -> tuple[CertificateFailure, ...]:
    exts = cert.obj.extensions
    try:
        ku = exts.get_extension_for_class(_x509.KeyUsage).value
        allowed_sign = ku.key_cert_sign
    except _x509.ExtensionNotFound:
        allowed_sign = True
    try:
        bc = exts.get_extension_for_class(_x509.BasicConstraints).value
        allowed_ca, path_len = bc.ca, (bc.path_length if bc.ca else None)
    except _x509.ExtensionNotFound:
        allowed_ca, path_len = False, None
    allowed_depth = path_len is None or path_len >= level
    out = []
    if not allowed_sign:
        out.append(CertificateFailure.NOT_ALLOWED_TO_SIGN)
    if not allowed_ca:
        out.append(CertificateFailure.NOT_AN_AUTHORITY)
    if not allowed_depth:
        out.append(CertificateFailure.AUTHORITY_TOO_DEEP)
    return tuple(out)


def x509_validate(ca_cert_der: bytes, chain: Sequence[bytes], now: Instant) -> tuple[CertificateFailure, ...]:
    """Reference ``x509validate`` (crypton-x509-validation ``validatePure`` with ``defaultChecks``,
    ``checkFQHN = False``) with ``ca_cert_der`` as the only trust anchor: leaf v3; then for each
    certificate on the path its validity at ``now``; if its issuer is the anchor, the signature
    by the anchor ends the walk; a self-signed non-anchor is ``SELF_SIGNED``; else the issuer is
    looked up in the rest of the chain (CA constraints, signature, recurse). Stops at the first
    failure. Returns the failures (empty = valid)."""
    if not chain:
        return (CertificateFailure.EMPTY_CHAIN,)
    t = _utc(now)
    try:
        anchor = _load_cert(ca_cert_der)
        certs = [_load_cert(c) for c in chain]
    except CertificateError as e:
        return e.reasons
    current, rest, level = certs[0], certs[1:], 0
    if current.version != 2:
        return (CertificateFailure.LEAF_NOT_V3,)
    while True:
        r = _check_time(current, t)
        if r:
            return r
        if current.issuer_raw == anchor.subject_raw:
            return _check_signature(current, anchor)
        if current.issuer_raw == current.subject_raw:
            return (CertificateFailure.SELF_SIGNED,)
        issuer = next((c for c in rest if c.subject_raw == current.issuer_raw), None)
        if issuer is None:
            return (CertificateFailure.UNKNOWN_CA,)
        r = _check_ca(level, issuer) or _check_signature(current, issuer)
        if r:
            return r
        rest = [c for c in rest if c.der != issuer.der]
        current, level = issuer, level + 1


def _raise_failures(failures: tuple[CertificateFailure, ...], detail: str = "") -> None:
    if failures:
        raise CertificateError(failures[0], detail, failures)


def validate_server_chain(chain: Sequence[bytes], expected_key_hash: bytes, now: Instant) -> ChainCertificates:
    """A client's check of a router's TLS chain (reference ``validateCertificateChain``,
    smp.md §2.4): 2–4 certificates; ``SHA-256(idCert) == expected_key_hash`` else
    ``UNKNOWN_CA``; then :func:`x509_validate` with ``caCert`` as the only anchor.
    Returns the classified chain or raises :class:`CertificateError`."""
    cc = chain_id_ca_certs(chain)
    assert cc.id_cert is not None and cc.ca_cert is not None
    if key_hash(cc.id_cert) != bytes(expected_key_hash):
        raise CertificateError(CertificateFailure.UNKNOWN_CA, "identity certificate does not match the key hash")
    _raise_failures(x509_validate(cc.ca_cert, chain, now))
    return cc


def validate_client_chain(chain: Sequence[bytes], now: Instant) -> ChainCertificates | None:
    """A router's check of a client ("service") TLS chain, v ≥ 16 (reference
    ``validateClientCertificate``, smp.md §2.6): empty → ``None`` (ordinary client); one
    self-signed certificate or 2–4 with a CA, validated with its own CA as the anchor."""
    cc = classify_chain(chain)
    if cc.kind is ChainKind.EMPTY:
        return None
    if cc.kind is ChainKind.LONG:
        raise CertificateError(CertificateFailure.AUTHORITY_TOO_DEEP, "chain too long")
    assert cc.ca_cert is not None
    _raise_failures(x509_validate(cc.ca_cert, chain, now))
    return cc


# ---------------------------------------------------------------- signed session key (smp.md §3.2)


@attrs.frozen
class SignedKey:
    """A decoded X.509 ``SignedExact PubKey``: ``SEQUENCE { objRaw, AlgorithmIdentifier,
    BIT STRING }`` with ``objRaw = SEQUENCE { SPKI }`` — the bytes that are signed."""

    der: bytes
    object_der: bytes  # objRaw, the signed bytes (46 for X25519)
    spki_der: bytes
    algorithm_oid: bytes  # OID content bytes
    has_parameters: bool
    signature: bytes


def parse_signed_key(der: bytes) -> SignedKey:
    """Strict structural decoding of a ``SignedExact PubKey``; :class:`ParseError` otherwise.
    The key type, algorithm and signature are checked by :func:`verify_session_key`."""
    der = bytes(der)
    outer = _tlv(der, 0, len(der))
    if outer.tag != 0x30 or outer.end != len(der):
        raise ParseError("signed key: not one DER SEQUENCE")
    obj = _tlv(der, outer.body, outer.end)
    if obj.tag != 0x30:
        raise ParseError("signed key: object is not a SEQUENCE")
    spki = _tlv(der, obj.body, obj.end)
    if spki.tag != 0x30 or spki.end != obj.end:
        raise ParseError("signed key: object is not SEQUENCE { SubjectPublicKeyInfo }")
    alg = _tlv(der, obj.end, outer.end)
    if alg.tag != 0x30:
        raise ParseError("signed key: bad AlgorithmIdentifier")
    oid = _tlv(der, alg.body, alg.end)
    if oid.tag != 0x06:
        raise ParseError("signed key: AlgorithmIdentifier without an OID")
    bits = _tlv(der, alg.end, outer.end)
    if bits.tag != 0x03 or bits.end != outer.end:
        raise ParseError("signed key: no signature BIT STRING at the end")
    if bits.end == bits.body or der[bits.body] != 0:
        raise ParseError("signed key: signature BIT STRING with unused bits")
    return SignedKey(
        der=der,
        object_der=der[obj.start : obj.end],
        spki_der=der[spki.start : spki.end],
        algorithm_oid=der[oid.body : oid.end],
        has_parameters=oid.end != alg.end,
        signature=der[bits.body + 1 : bits.end],
    )


def sign_session_key(leaf_key: PrivateKey, public_key: PublicKey) -> bytes:
    """The DER ``SignedExact`` of ``public_key`` (an X25519 session key in the router hello; an
    Ed25519 key in a service client hello) signed with the online/leaf key (reference
    ``C.signX509``): 122 bytes with Ed25519, 173 with Ed448 for an X25519 key."""
    if leaf_key.alg not in _SIG_OID:
        raise LocalProtocolError("the leaf key must be Ed25519 or Ed448")
    obj = _der(0x30, public_key.spki())
    alg_id = _der(0x30, _der(0x06, _SIG_OID[leaf_key.alg]))
    sig = _der(0x03, b"\x00" + leaf_key.sign(obj))
    return _der(0x30, obj + alg_id + sig)


def verify_session_key(
    leaf_cert_der: bytes,
    signed_der: bytes,
    key_alg: KeyAlgorithm = KeyAlgorithm.X25519,
) -> PublicKey:
    """Check a signed key against the TLS peer's leaf certificate (reference
    ``getServerVerifyKey`` + ``C.verifyX509`` + ``x509ToPublic'``) and return the key.

    Raises :class:`CertificateError` (``INVALID_SESSION_KEY``; ``MALFORMED`` if the leaf does not
    decode) — the handshake maps it to ``HANDSHAKE BAD_AUTH``."""
    bad = CertificateFailure.INVALID_SESSION_KEY
    try:
        sk = parse_signed_key(signed_der)
    except ParseError as e:
        raise CertificateError(bad, f"undecodable signed key: {e}") from e
    alg = _OID_SIG.get(sk.algorithm_oid)
    if alg is None or sk.has_parameters:
        raise CertificateError(bad, "unknown x509 signature algorithm")
    try:
        verify_key = certificate_public_key(leaf_cert_der)
    except CertificateError as e:
        if e.reason is CertificateFailure.MALFORMED:
            raise
        raise CertificateError(bad, "leaf key cannot verify signatures") from e
    if verify_key.alg is not alg or not verify_key.verify(sk.signature, sk.object_der):
        raise CertificateError(bad, "bad signature")
    try:
        key = PublicKey.from_spki(sk.spki_der)
    except ParseError as e:
        raise CertificateError(bad, "signed object is not a supported public key") from e
    if key.alg is not key_alg:
        raise CertificateError(bad, f"signed key is {key.alg.value}, expected {key_alg.value}")
    return key


@attrs.frozen
class CertChainPubKey:
    """``CertChainPubKey``: ``ne(lg(cert DER)) ‖ lg(SignedExact DER)`` (smp.md §3.2), the router
    hello's ``authPubKey``, PKEY's key and a service client's credential."""

    chain: tuple[bytes, ...] = attrs.field(converter=tuple)
    signed_key: bytes

    def encode(self) -> bytes:
        return ne(lg(c) for c in self.chain) + lg(self.signed_key)

    @staticmethod
    def parse(r: Reader) -> "CertChainPubKey":
        """Decode; each certificate must decode as X.509 and the signed key as a
        ``SignedExact`` (reference ``certChainP``/``SignedObject``), else :class:`ParseError`."""
        chain = r.ne(lambda rr: rr.lg())
        for c in chain:
            try:
                _load_cert(c)
            except CertificateError as e:
                raise ParseError(f"certificate chain: {e}") from e
        signed = r.lg()
        parse_signed_key(signed)
        return CertChainPubKey(tuple(chain), signed)

    @staticmethod
    def make(chain: Sequence[bytes], leaf_key: PrivateKey, public_key: PublicKey) -> "CertChainPubKey":
        """The router's value: its TLS chain and ``public_key`` signed by ``leaf_key``."""
        return CertChainPubKey(tuple(chain), sign_session_key(leaf_key, public_key))

    def verify(
        self,
        tls_leaf_der: bytes,
        expected_key_hash: bytes,
        key_alg: KeyAlgorithm = KeyAlgorithm.X25519,
    ) -> PublicKey:
        """The client's acceptance (reference ``smpClientHandshake``): 2–4 certificates with
        ``SHA-256(idCert) == expected_key_hash``, and the key signed by the **TLS** peer leaf
        ``tls_leaf_der`` (not the hello's own leaf). Raises :class:`CertificateError`."""
        cc = chain_id_ca_certs(self.chain)
        assert cc.id_cert is not None
        if key_hash(cc.id_cert) != bytes(expected_key_hash):
            raise CertificateError(CertificateFailure.UNKNOWN_CA, "hello chain does not match the key hash")
        return verify_session_key(tls_leaf_der, self.signed_key, key_alg)
