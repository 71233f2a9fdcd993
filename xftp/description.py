"""XFTP file descriptions: the YAML text, redirects, validation, URIs (xftp-ntf.md §1.11, §1.12).

The reference emits descriptions with ``Data.Yaml.encode`` of an aeson object; this module has
its own emitter and parser for exactly that YAML subset (keys in alphabetical order, block style,
2-space indentation, indentless sequences under mapping keys, plain scalars unless a string would
read as a number/bool/null, then single-quoted). Parsing keeps scalars as strings (no YAML 1.1
surprises) and resolves plain scalars only where the reference expects a number.

:meth:`FileDescription.encode` reproduces the reference fixture ``file_description.yaml`` byte for
byte; replicas are grouped by server in Haskell's ``Ord ProtocolServer`` order (host first), not by
the URI string as xftp-web does.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Iterable

import attrs

from sansio_smp.addresses import ProtocolServer, bracketed_host
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, cb_nonce
from sansio_smp.encoding import b64url_decode, b64url_encode
from sansio_smp.errors import ParseError

from .links import decode_web_fragment, encode_web_fragment

FD_SEPARATOR = "################################\n"
"""``fdSeparator``: separates descriptions in one text."""

QR_SIZE_LIMIT = 1002


class DescriptionError(ParseError):
    """A file description that does not parse, or does not validate."""


# ---------------------------------------------------------------- FileSize text


def encode_file_size(n: int) -> str:
    """``StrEncoding FileSize``: bytes, else ``Nkb``, else ``Nmb``, else ``Ngb`` (§1.11)."""
    ks, b = divmod(n, 1024)
    if b:
        return str(n)
    ms, ks_ = divmod(ks, 1024)
    if ks_:
        return f"{ks}kb"
    gs, ms_ = divmod(ms, 1024)
    if ms_:
        return f"{ms}mb"
    return f"{gs}gb"


_FILE_SIZE = re.compile(r"(\d+)(gb|mb|kb)?")
_UNITS = {"gb": 1 << 30, "mb": 1 << 20, "kb": 1 << 10, None: 1}


def decode_file_size(text: str) -> int:
    m = _FILE_SIZE.fullmatch(text)
    if not m:
        raise DescriptionError(f"invalid file size {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _b64(text: str, what: str) -> bytes:
    """``strP @ByteString``: non-empty base64url (padding optional)."""
    if not text:
        raise DescriptionError(f"{what}: empty")
    try:
        return b64url_decode(text)
    except ParseError as e:
        raise DescriptionError(f"{what}: {e}") from e


_AUTH_KEY_ALGS = (KeyAlgorithm.ED25519, KeyAlgorithm.ED448, KeyAlgorithm.X25519)


def _auth_key(text: str) -> PrivateKey:
    """``strDecode @APrivateAuthKey``: base64url PKCS#8 of an Ed25519, Ed448 or X25519 key."""
    try:
        key = PrivateKey.from_pkcs8(_b64(text, "replica key"))
    except (ParseError, ValueError) as e:
        raise DescriptionError(f"replica key: {e}") from e
    if key.alg not in _AUTH_KEY_ALGS:
        raise DescriptionError("replica key: key does not support auth algorithms")
    return key


# ---------------------------------------------------------------- model


@attrs.frozen
class FileChunkReplica:
    server: ProtocolServer
    replica_id: bytes
    replica_key: PrivateKey


@attrs.frozen
class FileChunk:
    chunk_no: int
    chunk_size: int
    digest: bytes  # SHA-256 of the encrypted chunk
    replicas: tuple[FileChunkReplica, ...]


@attrs.frozen
class RedirectFileInfo:
    """``redirect``: size and SHA-512 digest of the target (inner) encrypted file."""

    size: int
    digest: bytes


PARTIES = ("recipient", "sender")


@attrs.frozen
class FileDescription:
    """``FileDescription p`` (§1.11); ``party`` is ``"recipient"`` or ``"sender"``."""

    party: str
    size: int  # total encrypted size
    digest: bytes  # SHA-512 of the whole encrypted file
    key: bytes  # 32-byte SbKey
    nonce: bytes  # 24-byte nonce
    chunk_size: int  # default chunk size
    chunks: tuple[FileChunk, ...]
    redirect: RedirectFileInfo | None = None

    # -- text
    def encode(self) -> bytes:
        """``strEncode``: the YAML text, exactly as the reference writes it."""
        return encode_yaml(self._yaml_value())

    @staticmethod
    def decode(text: bytes | str) -> "FileDescription":
        """``strDecode @AFileDescription`` (no validation); :class:`DescriptionError` on bad input."""
        return _decode_description(parse_yaml(text))

    @staticmethod
    def decode_valid(text: bytes | str, party: str | None = None) -> "FileDescription":
        """``strDecode @AValidFileDescription``, optionally requiring the party (``checkParty``)."""
        fd = FileDescription.decode(text).validate()
        if party is not None and fd.party != party:
            raise DescriptionError(f"file description party mismatch: expected {party}, got {fd.party}")
        return fd

    def validate(self) -> "FileDescription":
        """``validateFileDescription``: chunk numbers 1..n in order, sizes sum to ``size``."""
        if [c.chunk_no for c in self.chunks] != list(range(1, len(self.chunks) + 1)):
            raise DescriptionError("chunk numbers are not sequential")
        if sum(c.chunk_size for c in self.chunks) != self.size:
            raise DescriptionError("chunks total size is different than file size")
        return self

    # -- grouping
    def server_replicas(self) -> list[tuple[ProtocolServer, list["FileServerReplica"]]]:
        """``groupReplicasByServer``: flat replicas grouped by server, in Haskell ``Ord`` order."""
        return group_replicas_by_server(self.chunk_size, self.chunks)

    def _yaml_value(self) -> dict:
        value: dict = {
            "chunkSize": encode_file_size(self.chunk_size),
            "digest": b64url_encode(self.digest),
            "key": b64url_encode(self.key),
            "nonce": b64url_encode(self.nonce),
            "party": self.party,
            "replicas": [
                {"chunks": [r.encode() for r in group], "server": server.to_str()}
                for server, group in self.server_replicas()
            ],
            "size": encode_file_size(self.size),
        }
        if self.redirect is not None:
            value["redirect"] = {"digest": b64url_encode(self.redirect.digest), "size": YamlInt(self.redirect.size)}
        return value


@attrs.frozen
class FileServerReplica:
    """One line of a ``chunks`` list: ``chunkNo:replicaId:replicaKey[:digest[:chunkSize]]``."""

    chunk_no: int
    server: ProtocolServer
    replica_id: bytes
    replica_key: PrivateKey
    digest: bytes | None = None
    chunk_size: int | None = None

    def encode(self) -> str:
        s = f"{self.chunk_no}:{b64url_encode(self.replica_id)}:{b64url_encode(self.replica_key.pkcs8())}"
        if self.digest is not None:
            s += ":" + b64url_encode(self.digest)
        if self.chunk_size is not None:
            s += ":" + encode_file_size(self.chunk_size)
        return s

    @staticmethod
    def parse(server: ProtocolServer, text: str) -> "FileServerReplica":
        """``serverReplicaP``: the whole string must be consumed."""
        m = re.fullmatch(rf"(\d+):({_B64}):({_B64})(?::({_B64}))?(?::(\d+(?:gb|mb|kb)?))?", text)
        if not m:
            raise DescriptionError(f"invalid replica {text!r}")
        return FileServerReplica(
            chunk_no=int(m.group(1)),
            server=server,
            replica_id=_b64(m.group(2), "replica id"),
            replica_key=_auth_key(m.group(3)),
            digest=None if m.group(4) is None else _b64(m.group(4), "chunk digest"),
            chunk_size=None if m.group(5) is None else decode_file_size(m.group(5)),
        )


_B64 = r"[A-Za-z0-9_-]+=*"


def unfold_chunks_to_replicas(default_chunk_size: int, chunks: Iterable[FileChunk]) -> list[FileServerReplica]:
    """``unfoldChunksToReplicas``: the first replica of a chunk carries its digest, and its size
    when that differs from the default."""
    out = []
    for c in chunks:
        for i, r in enumerate(c.replicas):
            first = i == 0
            out.append(
                FileServerReplica(
                    c.chunk_no,
                    r.server,
                    r.replica_id,
                    r.replica_key,
                    c.digest if first else None,
                    c.chunk_size if first and c.chunk_size != default_chunk_size else None,
                )
            )
    return out


def group_replicas_by_server(
    default_chunk_size: int, chunks: Iterable[FileChunk]
) -> list[tuple[ProtocolServer, list[FileServerReplica]]]:
    """``groupAllWith server``: a stable sort by server (Haskell ``Ord``) then grouping."""
    flat = sorted(unfold_chunks_to_replicas(default_chunk_size, chunks), key=lambda r: r.server.sort_key())
    groups: list[tuple[ProtocolServer, list[FileServerReplica]]] = []
    for r in flat:
        if groups and groups[-1][0] == r.server:
            groups[-1][1].append(r)
        else:
            groups.append((r.server, [r]))
    return groups


def fold_replicas_to_chunks(default_chunk_size: int, replicas: list[FileServerReplica]) -> tuple[FileChunk, ...]:
    """``foldReplicasToChunks``: digests and sizes must agree across replicas; every chunk needs a
    digest; replicas keep their order of appearance."""
    sizes: dict[int, int] = {}
    digests: dict[int, bytes] = {}
    for r in replicas:
        for table, value in ((sizes, r.chunk_size), (digests, r.digest)):
            if value is None:
                continue
            if table.setdefault(r.chunk_no, value) != value:
                raise DescriptionError("different size or digest in chunk replicas")
    found: dict[int, list[FileChunkReplica]] = {}
    for r in replicas:
        if r.chunk_no not in found and r.chunk_no not in digests:
            raise DescriptionError("no digest for chunk")
        found.setdefault(r.chunk_no, []).append(FileChunkReplica(r.server, r.replica_id, r.replica_key))
    return tuple(
        FileChunk(n, sizes.get(n, default_chunk_size), digests[n], tuple(reps)) for n, reps in sorted(found.items())
    )


def _decode_description(doc: object) -> FileDescription:
    if not isinstance(doc, dict):
        raise DescriptionError("file description must be a mapping")

    def field(name: str, obj: dict = doc) -> object:
        if name not in obj:
            raise DescriptionError(f"missing key {name!r}")
        return obj[name]

    def text(name: str, obj: dict = doc) -> str:
        v = field(name, obj)
        if not isinstance(v, YamlStr) or not v.is_string:
            raise DescriptionError(f"{name}: expected a string")
        return str(v)

    party = text("party")
    if party not in PARTIES:
        raise DescriptionError(f"invalid party {party!r}")
    size = decode_file_size(text("size"))
    chunk_size = decode_file_size(text("chunkSize"))
    if chunk_size > 0xFFFFFFFF:
        raise DescriptionError("chunkSize out of range")
    digest = _b64(text("digest"), "digest")
    key = _b64(text("key"), "key")
    if len(key) != 32:
        raise DescriptionError("SbKey: invalid length")
    nonce = cb_nonce(_b64(text("nonce"), "nonce"))
    redirect = None
    raw_redirect = doc.get("redirect")
    if raw_redirect is not None and not (isinstance(raw_redirect, YamlStr) and raw_redirect.is_null):
        if not isinstance(raw_redirect, dict):
            raise DescriptionError("redirect: expected a mapping")
        rsize = field("size", raw_redirect)
        if not (isinstance(rsize, YamlStr) and rsize.is_integer):
            raise DescriptionError("redirect.size: expected a number")
        redirect = RedirectFileInfo(int(str(rsize)), _b64(text("digest", raw_redirect), "redirect digest"))
    groups = field("replicas")
    if not isinstance(groups, list):
        raise DescriptionError("replicas: expected a list")
    flat: list[FileServerReplica] = []
    for g in groups:
        if not isinstance(g, dict):
            raise DescriptionError("replicas: expected mappings")
        server = ProtocolServer.from_str(text("server", g), "xftp")
        lines = field("chunks", g)
        if not isinstance(lines, list) or not all(isinstance(x, YamlStr) for x in lines):
            raise DescriptionError("chunks: expected a list of strings")
        flat.extend(FileServerReplica.parse(server, str(line)) for line in lines)
    chunks = fold_replicas_to_chunks(chunk_size, flat)
    return FileDescription(party, size, digest, key, nonce, chunk_size, chunks, redirect)


# ---------------------------------------------------------------- links and URIs


def encode_web_uri(fd: FileDescription) -> str:
    """``encodeWebURI``: the web-link fragment of a (recipient) description."""
    return encode_web_fragment(fd.encode())


def decode_web_uri(fragment: str) -> FileDescription:
    """``decodeWebURI``: a validated recipient description from a web-link fragment."""
    return FileDescription.decode_valid(decode_web_fragment(fragment), party="recipient")


def file_web_link(fd: FileDescription) -> str | None:
    """``fileWebLink``: ``https://<host of the first chunk's first replica>/#<fragment>``."""
    if not fd.chunks or not fd.chunks[0].replicas:
        return None
    first = fd.chunks[0].replicas[0].server.hosts[0]
    return f"https://{bracketed_host(first)}/#{encode_web_uri(fd)}"


@attrs.frozen
class FileDescriptionURI:
    """``simplex:/file#/?desc=<escaped YAML>[&data=<client JSON>]`` (``FileDescriptionURI``)."""

    description: FileDescription
    client_data: str | None = None
    scheme: str = "simplex:"  # or "https://<host>[:port]"

    def encode(self) -> str:
        q = [("desc", self.description.encode())]
        if self.client_data is not None:
            q.append(("data", self.client_data.encode("utf-8")))
        query = "&".join(f"{urllib.parse.quote_plus(k)}={urllib.parse.quote_plus(v, safe='')}" for k, v in q)
        return f"{self.scheme}/file#/?{query}"

    @staticmethod
    def decode(text: str) -> "FileDescriptionURI":
        m = re.fullmatch(r"(simplex:|https://[^:#,;/ ]+(?::\d+)?)/file/?#/\?([^ \n]*)", text)
        if not m:
            raise DescriptionError("invalid file description URI")
        params: dict[str, bytes] = {}
        for part in re.split(r"[&;]", m.group(2)):
            if not part:
                continue
            k, _, v = part.partition("=")
            key = urllib.parse.unquote_plus(k)
            if key not in params:
                params[key] = urllib.parse.unquote_to_bytes(v.replace("+", " "))
        if "desc" not in params:
            raise DescriptionError("no qs param desc")
        fd = FileDescription.decode_valid(params["desc"], party="recipient")
        data = params.get("data")
        return FileDescriptionURI(fd, None if data is None else data.decode("utf-8", errors="replace"), m.group(1))


# ---------------------------------------------------------------- the YAML subset


class YamlStr(str):
    """A scalar as written: its text plus whether it was plain (unquoted)."""

    plain: bool = True

    def __new__(cls, text: str, plain: bool = True) -> "YamlStr":
        s = super().__new__(cls, text)
        s.plain = plain
        return s

    @property
    def is_null(self) -> bool:
        return self.plain and str(self) in ("", "~", "null", "Null", "NULL")

    @property
    def is_string(self) -> bool:
        """Whether Data.Yaml reads it as a string (a plain ``500``/``true``/``~`` is not one)."""
        if not self.plain:
            return True
        t = str(self)
        return not (
            self.is_null or t.lower() in _BOOL_WORDS and t in (t.lower(), t.upper(), t.title()) or _NUMERIC.fullmatch(t)
        )

    @property
    def is_integer(self) -> bool:
        return self.plain and re.fullmatch(r"[0-9]+", str(self)) is not None


class YamlInt(int):
    """An integer to emit as a plain number (``redirect.size``)."""


_SPECIAL_STRINGS = frozenset(
    "y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF null Null NULL ~ *".split()
)
_BOOL_WORDS = frozenset("y yes on true n no off false".split())
_NUMERIC = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _scalar(s: str) -> str:
    """Data.Yaml's string style: plain unless the text would read as something else."""
    if s == "" or s in _SPECIAL_STRINGS or _NUMERIC.fullmatch(s) or not _plain_safe(s):
        return "'" + s.replace("'", "''") + "'"
    return s


def _plain_safe(s: str) -> bool:
    """A conservative subset of libyaml's block-plain rule, enough for base64url/URIs/sizes."""
    if s[0] in " !&*|>'\"%@`#,[]{}?:" or s[-1] == " " or (s[0] == "-" and (len(s) == 1 or s[1] == " ")):
        return False
    return ": " not in s and " #" not in s and "\n" not in s and all(0x20 <= ord(c) < 0x7F for c in s)


def encode_yaml(value: dict) -> bytes:
    """Emit a mapping (keys sorted) in the block style Data.Yaml produces."""
    lines: list[str] = []
    _emit_map(value, 0, lines)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _emit_map(m: dict, indent: int, lines: list[str], first_prefix: str | None = None) -> None:
    for i, k in enumerate(sorted(m)):
        pad = first_prefix if (i == 0 and first_prefix is not None) else " " * indent
        _emit_entry(pad + _scalar(k) + ":", m[k], indent, lines)


def _emit_entry(head: str, v: object, indent: int, lines: list[str]) -> None:
    if isinstance(v, dict):
        if not v:
            lines.append(head + " {}")
        else:
            lines.append(head)
            _emit_map(v, indent + 2, lines)
    elif isinstance(v, list):
        if not v:
            lines.append(head + " []")
        else:
            lines.append(head)
            _emit_seq(v, indent, lines)  # indentless sequence under a mapping key
    elif isinstance(v, YamlInt):
        lines.append(f"{head} {int(v)}")
    else:
        lines.append(f"{head} {_scalar(str(v))}")


def _emit_seq(items: list, indent: int, lines: list[str]) -> None:
    for item in items:
        if isinstance(item, dict) and item:
            _emit_map(item, indent + 2, lines, first_prefix=" " * indent + "- ")
        elif isinstance(item, YamlInt):
            lines.append(" " * indent + f"- {int(item)}")
        else:
            lines.append(" " * indent + "- " + _scalar(str(item)))


def parse_yaml(text: bytes | str) -> object:
    """Parse the block-style YAML subset; scalars come back as :class:`YamlStr`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DescriptionError("description is not UTF-8") from e
    lines: list[tuple[int, str]] = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if "\t" in line[: len(line) - len(stripped)]:
            raise DescriptionError("tabs in indentation")
        lines.append((len(line) - len(stripped), stripped.rstrip(" ")))
    if not lines:
        raise DescriptionError("empty description")
    p = _YamlParser(lines)
    node = p.node(lines[0][0])
    if p.i != len(lines):
        raise DescriptionError(f"unexpected content at line {p.i + 1}")
    return node


class _YamlParser:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.i = 0

    def node(self, indent: int) -> object:
        col, content = self.lines[self.i]
        if col != indent:
            raise DescriptionError("bad indentation")
        if content == "-" or content.startswith("- "):
            return self.seq(indent)
        return self.mapping(indent)

    def seq(self, indent: int) -> list:
        out = []
        while self.i < len(self.lines):
            col, content = self.lines[self.i]
            if col != indent or not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:].lstrip(" ")
            inner = indent + (len(content) - len(rest))
            if not rest:
                self.i += 1
                out.append(self.nested(indent, allow_indentless=False))
            elif _split_key(rest) is not None:
                self.lines[self.i] = (inner, rest)  # the item is a mapping starting on this line
                out.append(self.mapping(inner))
            else:
                self.i += 1
                out.append(_parse_scalar(rest))
        return out

    def mapping(self, indent: int) -> dict:
        out: dict = {}
        while self.i < len(self.lines):
            col, content = self.lines[self.i]
            if col < indent:
                break
            if col > indent:
                raise DescriptionError("bad indentation")
            kv = _split_key(content)
            if kv is None:
                raise DescriptionError(f"expected 'key: value' at line {self.i + 1}")
            key, value = kv
            self.i += 1
            out[str(key)] = self.nested(indent, allow_indentless=True) if value == "" else _parse_scalar(value)
        return out

    def nested(self, indent: int, allow_indentless: bool) -> object:
        if self.i >= len(self.lines):
            return YamlStr("")
        col, content = self.lines[self.i]
        if col > indent:
            return self.node(col)
        if allow_indentless and col == indent and (content == "-" or content.startswith("- ")):
            return self.seq(indent)
        return YamlStr("")


def _split_key(content: str) -> tuple[str, str] | None:
    """``key: value`` / ``key:`` with a plain or quoted key; ``None`` if it is not a mapping entry."""
    if content[0] in "'\"":
        end = _quoted_end(content)
        if end is None or not content.startswith(":", end) or not (len(content) == end + 1 or content[end + 1] == " "):
            return None
        return _parse_scalar(content[:end]), content[end + 1 :].strip(" ")
    m = re.match(r"([^#'\"\[\]{},][^:]*?|[^:]*?):(?: (.*)|$)", content)
    if not m or content.startswith("- "):
        return None
    return m.group(1), (m.group(2) or "").strip(" ")


def _quoted_end(s: str) -> int | None:
    q = s[0]
    i = 1
    while i < len(s):
        if q == "'" and s[i] == "'":
            if s.startswith("''", i):
                i += 2
                continue
            return i + 1
        if q == '"':
            if s[i] == "\\":
                i += 2
                continue
            if s[i] == '"':
                return i + 1
        i += 1
    return None


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "/": "/", "0": "\0", " ": " "}


def _parse_scalar(s: str) -> object:
    if s == "[]":
        return []
    if s == "{}":
        return {}
    if s[0] == "'":
        if _quoted_end(s) != len(s):
            raise DescriptionError("bad single-quoted scalar")
        return YamlStr(s[1:-1].replace("''", "'"), plain=False)
    if s[0] == '"':
        if _quoted_end(s) != len(s):
            raise DescriptionError("bad double-quoted scalar")
        out, i, body = [], 0, s[1:-1]
        while i < len(body):
            c = body[i]
            if c == "\\":
                if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                    raise DescriptionError("unsupported escape in double-quoted scalar")
                out.append(_ESCAPES[body[i + 1]])
                i += 2
            else:
                out.append(c)
                i += 1
        return YamlStr("".join(out), plain=False)
    if s[0] in "[{&*!|>%@`":
        raise DescriptionError(f"unsupported YAML construct {s[:10]!r}")
    if " #" in s:
        s = s[: s.index(" #")].rstrip(" ")
    return YamlStr(s)
