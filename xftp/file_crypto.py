"""XFTP file format: streamed encryption, padding, chunk sizes, digests (xftp-ntf.md §1.9, §1.10).

Everything here is incremental and pure: objects are fed pieces of bytes and return bytes; no
file is ever held whole. The cipher is the reference's streamed secretbox
(:class:`sansio_smp.crypto.SecretBoxStream`: XSalsa20-Poly1305 behind the HSalsa20 key step,
tag at the tail), driven through libsodium at C speed.

Encrypted file layout (one stream, key = random 32-byte SbKey, nonce = random 24 bytes)::

    Int64 fileSize' ‖ FileHeader ‖ content ‖ '#'… ‖ tag(16)        (encSize bytes in all)

with ``fileSize' = len(FileHeader) + len(content)``; ``encSize`` = the sum of the chunk sizes
chosen by :func:`prepare_chunk_sizes` for ``payload = fileSize' + 8 + 16``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterator

import attrs

from sansio_smp.crypto import SecretBoxStream
from sansio_smp.encoding import Reader, i64, sb
from sansio_smp.errors import CryptoError, LocalProtocolError, ParseError

KB = 1024
MB = 1024 * KB
GB = 1024 * MB

CHUNK_SIZE_0 = 64 * KB
CHUNK_SIZE_1 = 256 * KB
CHUNK_SIZE_2 = 1 * MB
CHUNK_SIZE_3 = 4 * MB
SERVER_CHUNK_SIZES: tuple[int, ...] = (CHUNK_SIZE_0, CHUNK_SIZE_1, CHUNK_SIZE_2, CHUNK_SIZE_3)
"""``serverChunkSizes`` (§1.9)."""

FILE_SIZE_LEN = 8  # Int64 length prefix (``fileSizeLen``)
AUTH_TAG_SIZE = 16
HEADER_PARSE_LIMIT = 1024  # the header is parsed from at most this many bytes (``decryptChunks``)
MAX_FILE_SIZE = 1 * GB  # CLI soft limit (``maxFileSize``)
MAX_FILE_SIZE_HARD = 5 * GB  # agent hard limit (``maxFileSizeHard``)
_PAD_PIECE = b"#" * (64 * KB)


class FileCryptoError(CryptoError):
    """The encrypted file does not decrypt: bad tag, bad length or bad header (``FTCryptoError``)."""


# ---------------------------------------------------------------- lazy padding (Int64 length)


def lazy_pad(message: bytes, padded_len: int) -> bytes:
    """``LC.pad``: ``Int64(len) ‖ message ‖ '#'…`` to exactly ``padded_len`` bytes (§0)."""
    pad_len = padded_len - len(message) - FILE_SIZE_LEN
    if pad_len < 0:
        raise LocalProtocolError("lazy pad: message exceeds padded size")
    return i64(len(message)) + message + b"#" * pad_len


def split_len(padded: bytes) -> tuple[int, bytes]:
    """``LC.splitLen``: ``(declared length, up to that many following bytes)``.

    Like the reference it returns what is there when the data is shorter than declared; a
    negative length or fewer than 8 bytes is a :class:`FileCryptoError`.
    """
    if len(padded) < FILE_SIZE_LEN:
        raise FileCryptoError("splitLen: shorter than the length prefix")
    n = int.from_bytes(padded[:FILE_SIZE_LEN], "big", signed=True)
    if n < 0:
        raise FileCryptoError("splitLen: negative length")
    return n, bytes(padded[FILE_SIZE_LEN : FILE_SIZE_LEN + n])


def lazy_unpad(padded: bytes) -> bytes:
    return split_len(padded)[1]


# ---------------------------------------------------------------- file header


@attrs.frozen
class FileHeader:
    """``FileHeader``: ``str(UTF-8 name) ‖ maybe(str(extra))`` (§1.10)."""

    file_name: str
    file_extra: str | None = None

    def encode(self) -> bytes:
        extra = b"0" if self.file_extra is None else b"1" + sb(self.file_extra.encode("utf-8"))
        return sb(self.file_name.encode("utf-8")) + extra

    @staticmethod
    def parse(r: Reader) -> "FileHeader":
        # safeDecodeUtf8: invalid UTF-8 is replaced, not rejected
        name = r.sb().decode("utf-8", errors="replace")
        extra = r.maybe(lambda rr: rr.sb().decode("utf-8", errors="replace"))
        return FileHeader(name, extra)


# ---------------------------------------------------------------- chunk sizes (§1.9)


def prepare_chunk_sizes(payload: int) -> list[int]:
    """``prepareChunkSizes``: the chunk sizes for ``payload = fileSize' + 8 + 16`` bytes."""
    if payload < 0:
        raise LocalProtocolError("negative payload size")
    if payload > (CHUNK_SIZE_3 * 3) // 4:
        small, big = CHUNK_SIZE_2, CHUNK_SIZE_3
    elif payload > (CHUNK_SIZE_2 * 3) // 4:
        small, big = CHUNK_SIZE_1, CHUNK_SIZE_2
    else:
        small, big = CHUNK_SIZE_0, CHUNK_SIZE_1
    sizes: list[int] = []
    remaining = payload
    while remaining > 0:
        if remaining >= big:
            n, remaining = divmod(remaining, big)
            sizes.extend([big] * n)
        elif remaining > (big * 3) // 4:
            sizes.append(big)
            remaining = 0
        else:
            sizes.extend([small] * (-(-remaining // small)))
            remaining = 0
    return sizes


def single_chunk_size(payload: int) -> int | None:
    """``singleChunkSize``: the smallest server chunk size that holds ``payload``, else ``None``."""
    for size in SERVER_CHUNK_SIZES:
        if payload <= size:
            return size
    return None


def chunk_specs(chunk_sizes: list[int]) -> list[tuple[int, int]]:
    """``prepareChunkSpecs``: ``(offset, size)`` of each chunk in the encrypted file."""
    out, offset = [], 0
    for size in chunk_sizes:
        out.append((offset, size))
        offset += size
    return out


@attrs.frozen
class UploadPlan:
    """What ``encryptFileForUpload`` decides before encrypting (§1.10)."""

    header: bytes
    file_size: int  # fileSize' = len(header) + content length
    chunk_sizes: tuple[int, ...]

    @property
    def enc_size(self) -> int:
        return sum(self.chunk_sizes)

    @property
    def padding_length(self) -> int:
        return self.enc_size - AUTH_TAG_SIZE - FILE_SIZE_LEN - self.file_size

    @staticmethod
    def for_file(file_name: str, content_length: int) -> "UploadPlan":
        header = FileHeader(file_name).encode()
        file_size = len(header) + content_length
        sizes = prepare_chunk_sizes(file_size + FILE_SIZE_LEN + AUTH_TAG_SIZE)
        return UploadPlan(header, file_size, tuple(sizes))


# ---------------------------------------------------------------- encryption


class FileEncryptor:
    """Incremental ``encryptFile`` (§1.10): call :meth:`start`, then :meth:`encrypt` with the
    content in pieces (exactly ``content_length`` bytes in all), then iterate :meth:`finish`
    (encrypted padding pieces, then the tag). The outputs concatenated are ``enc_size`` bytes."""

    def __init__(self, key: bytes, nonce: bytes, header: bytes, content_length: int, enc_size: int) -> None:
        if len(key) != 32 or len(nonce) != 24:
            raise LocalProtocolError("file key must be 32 bytes and nonce 24 bytes")
        self.file_size = len(header) + content_length
        self.enc_size = enc_size
        self.pad_length = enc_size - AUTH_TAG_SIZE - self.file_size - FILE_SIZE_LEN
        if self.pad_length < 0:
            raise LocalProtocolError("encryptFile: encSize too small")
        self._header = header
        self._remaining = content_length
        self._stream = SecretBoxStream(key, nonce)
        self._state = "new"

    def start(self) -> bytes:
        if self._state != "new":
            raise LocalProtocolError("encryptor already started")
        self._state = "content"
        return self._stream.encrypt(i64(self.file_size) + self._header)

    def encrypt(self, piece: bytes) -> bytes:
        if self._state != "content":
            raise LocalProtocolError("encrypt() before start() or after finish()")
        if len(piece) > self._remaining:
            raise LocalProtocolError("more content than declared")
        self._remaining -= len(piece)
        return self._stream.encrypt(piece)

    def encrypt_in_place(self, buf) -> None:  # type: ignore[no-untyped-def]
        """:meth:`encrypt` of content in a writable buffer (bytearray or a memoryview of one),
        replacing it with its ciphertext — the streaming path, with no allocation."""
        if self._state != "content":
            raise LocalProtocolError("encrypt() before start() or after finish()")
        n = memoryview(buf).nbytes
        if n > self._remaining:
            raise LocalProtocolError("more content than declared")
        self._remaining -= n
        self._stream.encrypt_in_place(buf)

    def finish(self) -> Iterator[bytes]:
        """Encrypted ``'#'`` padding in pieces of at most 64 KiB, then the 16-byte tag."""
        if self._state != "content":
            raise LocalProtocolError("finish() before start() or twice")
        if self._remaining:
            raise LocalProtocolError(f"content is {self._remaining} bytes shorter than declared")
        self._state = "done"
        left = self.pad_length
        while left > 0:
            n = min(left, len(_PAD_PIECE))
            yield self._stream.encrypt(_PAD_PIECE[:n])
            left -= n
        yield self._stream.tag()


def encrypt_file(key: bytes, nonce: bytes, header: bytes, content: bytes, enc_size: int) -> bytes:
    """One-shot ``encryptFile`` for small inputs (tests, redirect descriptions)."""
    enc = FileEncryptor(key, nonce, header, len(content), enc_size)
    return enc.start() + enc.encrypt(content) + b"".join(enc.finish())


# ---------------------------------------------------------------- digests and chunking


class ChunkDigester:
    """Follows an encrypted file's bytes as they are produced and computes each chunk's SHA-256
    and the whole file's SHA-512 (the description ``digest``), §1.10."""

    def __init__(self, chunk_sizes: list[int] | tuple[int, ...]) -> None:
        self.chunk_sizes = tuple(chunk_sizes)
        self.chunk_digests: list[bytes] = []
        self._file = hashlib.sha512()
        self._chunk = hashlib.sha256()
        self._index = 0
        self._left = self.chunk_sizes[0] if self.chunk_sizes else 0

    def update(self, data: bytes) -> list[int]:
        """Absorb the next bytes; returns the indices of the chunks this completed."""
        done: list[int] = []
        self._file.update(data)
        view = memoryview(data)
        while len(view):
            if self._index >= len(self.chunk_sizes):
                raise LocalProtocolError("more bytes than the chunk sizes hold")
            n = min(self._left, len(view))
            self._chunk.update(view[:n])
            view = view[n:]
            self._left -= n
            if self._left == 0:
                self.chunk_digests.append(self._chunk.digest())
                done.append(self._index)
                self._chunk = hashlib.sha256()
                self._index += 1
                if self._index < len(self.chunk_sizes):
                    self._left = self.chunk_sizes[self._index]
        return done

    @property
    def complete(self) -> bool:
        return self._index == len(self.chunk_sizes)

    def file_digest(self) -> bytes:
        if not self.complete:
            raise LocalProtocolError("file digest before all chunks were seen")
        return self._file.digest()


# ---------------------------------------------------------------- decryption


class FileDecryptor:
    """Incremental ``decryptChunks`` (§1.10): feed the encrypted file (all chunks in order, any
    split) with :meth:`decrypt`, which returns content bytes as they become available; then
    :meth:`finish` checks the total size and the tag.

    The content is returned *before* the tag is checked (as the reference writes it): a caller
    that writes it somewhere must discard it if :meth:`finish` raises :class:`FileCryptoError`.
    """

    def __init__(self, key: bytes, nonce: bytes, enc_size: int) -> None:
        if len(key) != 32 or len(nonce) != 24:
            raise LocalProtocolError("file key must be 32 bytes and nonce 24 bytes")
        if enc_size < FILE_SIZE_LEN + AUTH_TAG_SIZE:
            raise FileCryptoError("encrypted file too small")
        self.enc_size = enc_size
        self.header: FileHeader | None = None
        self._stream = SecretBoxStream(key, nonce)
        self._ct_left = enc_size - AUTH_TAG_SIZE  # ciphertext bytes still to come
        self._tag = b""
        self._prefix = b""  # plaintext before the header was parsed
        self._declared: int | None = None  # fileSize' (header + content)
        self._emit_left = 0  # content bytes still to hand out
        self._done = False

    def decrypt(self, data: bytes) -> bytes:
        if self._done:
            raise LocalProtocolError("decrypt() after finish()")
        n_ct = min(len(data), self._ct_left)
        tag_part = data[n_ct:]
        if len(self._tag) + len(tag_part) > AUTH_TAG_SIZE:
            raise FileCryptoError("encrypted file longer than its size")
        self._tag += bytes(tag_part)
        if n_ct == 0:
            return b""
        self._ct_left -= n_ct
        plain = self._stream.decrypt(data[:n_ct] if n_ct < len(data) else data)
        return self._plaintext(plain)

    def decrypt_in_place(self, buf) -> bytes | memoryview:  # type: ignore[no-untyped-def]
        """:meth:`decrypt` of a writable buffer (bytearray or a memoryview of one): the ciphertext
        in it is replaced by plaintext and the content part is returned, usually as a view into
        ``buf`` (consume it before reusing ``buf``)."""
        if self._done:
            raise LocalProtocolError("decrypt() after finish()")
        view = memoryview(buf).cast("B")
        n_ct = min(len(view), self._ct_left)
        tag_part = view[n_ct:]
        if len(self._tag) + len(tag_part) > AUTH_TAG_SIZE:
            raise FileCryptoError("encrypted file longer than its size")
        self._tag += bytes(tag_part)
        if n_ct == 0:
            return b""
        self._ct_left -= n_ct
        plain = view[:n_ct]
        self._stream.decrypt_in_place(plain)
        return self._plaintext(plain)

    def _plaintext(self, plain: bytes) -> bytes:
        if self.header is not None:
            return self._take(plain)
        self._prefix += plain
        if self._declared is None:
            if len(self._prefix) < FILE_SIZE_LEN:
                if self._ct_left == 0:
                    raise FileCryptoError("splitLen: shorter than the length prefix")
                return b""
            declared = int.from_bytes(self._prefix[:FILE_SIZE_LEN], "big", signed=True)
            if declared < 0:
                raise FileCryptoError("splitLen: negative length")
            self._declared = declared
        need = min(HEADER_PARSE_LIMIT, self._declared)
        body = self._prefix[FILE_SIZE_LEN:]
        if len(body) < need and self._ct_left > 0:
            return b""
        head = body[: min(need, len(body))]
        r = Reader(head)
        try:
            self.header = FileHeader.parse(r)
        except ParseError as e:
            raise FileCryptoError(f"invalid file header: {e}") from e
        self._emit_left = max(0, self._declared - r.pos)
        rest = body[r.pos :]
        self._prefix = b""
        return self._take(rest)

    def _take(self, plain: bytes) -> bytes:
        if self._emit_left >= len(plain):
            self._emit_left -= len(plain)
            return plain
        out = plain[: self._emit_left]
        self._emit_left = 0
        return out

    def finish(self) -> FileHeader:
        """Check completeness and the tag; return the header. Raises :class:`FileCryptoError`."""
        if self._done:
            raise LocalProtocolError("finish() twice")
        self._done = True
        if self._ct_left or len(self._tag) != AUTH_TAG_SIZE:
            raise FileCryptoError("encrypted file shorter than its size")
        if not hmac.compare_digest(self._tag, self._stream.tag()):
            raise FileCryptoError("invalid auth tag")
        if self.header is None:  # pragma: no cover - the last ciphertext byte forces the parse
            raise FileCryptoError("invalid file header")
        return self.header


def decrypt_file(key: bytes, nonce: bytes, encrypted: bytes) -> tuple[FileHeader, bytes]:
    """One-shot decryption of a whole (small) encrypted file."""
    dec = FileDecryptor(key, nonce, len(encrypted))
    content = dec.decrypt(encrypted)
    return dec.finish(), content


# ---------------------------------------------------------------- tail-tag secretbox (§0)


def sb_encrypt_tail_tag(key: bytes, nonce: bytes, message: bytes, padded_len: int) -> bytes:
    """``LC.sbEncryptTailTag``: ``stream(lazy_pad(message, padded_len)) ‖ tag``."""
    s = SecretBoxStream(key, nonce)
    return s.encrypt(lazy_pad(message, padded_len)) + s.tag()


def sb_decrypt_tail_tag(key: bytes, nonce: bytes, padded_len: int, packet: bytes) -> tuple[bool, bytes]:
    """``LC.sbDecryptTailTag``: ``(tag valid, unpadded message)``; a negative length is a
    :class:`FileCryptoError` (the reference's ``Left``)."""
    s = SecretBoxStream(key, nonce)
    plain = s.decrypt(packet[:padded_len])
    tag = packet[padded_len:]
    valid = len(tag) == AUTH_TAG_SIZE and hmac.compare_digest(tag, s.tag())
    return valid, lazy_unpad(plain)


__all__ = [
    "AUTH_TAG_SIZE",
    "CHUNK_SIZE_0",
    "CHUNK_SIZE_1",
    "CHUNK_SIZE_2",
    "CHUNK_SIZE_3",
    "ChunkDigester",
    "FILE_SIZE_LEN",
    "FileCryptoError",
    "FileDecryptor",
    "FileEncryptor",
    "FileHeader",
    "MAX_FILE_SIZE",
    "SERVER_CHUNK_SIZES",
    "UploadPlan",
    "chunk_specs",
    "decrypt_file",
    "encrypt_file",
    "lazy_pad",
    "lazy_unpad",
    "prepare_chunk_sizes",
    "sb_encrypt_tail_tag",
    "sb_decrypt_tail_tag",
    "single_chunk_size",
    "split_len",
]
