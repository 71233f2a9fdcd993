"""Binary encoding primitives shared by SMP, XFTP, NTF and the agent (smp.md §0, §5.1).

The reference (``Simplex.Messaging.Encoding``) encodes:

* ``sb(x)``  short string: 1 length byte then bytes;
* ``lg(x)``  Large: Word16 big-endian length then bytes;
* ``mb(x)``  Maybe: ``'0'`` for Nothing, ``'1'`` then ``x``;
* ``bool``   ``'T'`` / ``'F'``;
* ``w16``/``w32``/``i64`` big-endian integers (``SystemTime`` = i64 seconds);
* ``ne(x)``  NonEmpty list: count byte (≥1) then items; ``lst(x)`` the same allowing 0;
* ``tail``   the remaining bytes.

Encoders are plain functions returning ``bytes``; decoding goes through :class:`Reader`, whose
every method raises :class:`~sansio_smp.errors.ParseError` (and nothing else) on bad input, so
all parsers built on it are total.
"""

from __future__ import annotations

import base64
import binascii
from typing import Callable, Iterable, TypeVar

from .errors import LocalProtocolError, ParseError

T = TypeVar("T")

SPACE = b" "
PAD_BYTE = 0x23  # '#', smp.md §3.1


# ---------------------------------------------------------------- encoders


def sb(data: bytes) -> bytes:
    """Short string: ``len(1) ‖ data`` (smp.md §0)."""
    if len(data) > 255:
        raise LocalProtocolError(f"short string too long: {len(data)} bytes")
    return bytes((len(data),)) + data


def lg(data: bytes) -> bytes:
    """Large: ``w16(len) ‖ data`` (smp.md §0)."""
    if len(data) > 0xFFFF:
        raise LocalProtocolError(f"large string too long: {len(data)} bytes")
    return len(data).to_bytes(2, "big") + data


def mb(encoded: bytes | None) -> bytes:
    """Maybe of an already-encoded value: ``'0'`` or ``'1' ‖ encoded``."""
    return b"0" if encoded is None else b"1" + encoded


def boolean(value: bool) -> bytes:
    return b"T" if value else b"F"


def w16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"Word16 out of range: {value}")
    return value.to_bytes(2, "big")


def w32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"Word32 out of range: {value}")
    return value.to_bytes(4, "big")


def i64(value: int) -> bytes:
    if not -(1 << 63) <= value < (1 << 63):
        raise LocalProtocolError(f"Int64 out of range: {value}")
    return value.to_bytes(8, "big", signed=True)


def lst(items: Iterable[bytes]) -> bytes:
    """List: count byte then the already-encoded items (0..255)."""
    items = list(items)
    if len(items) > 255:
        raise LocalProtocolError("list longer than 255 items")
    return bytes((len(items),)) + b"".join(items)


def ne(items: Iterable[bytes]) -> bytes:
    """NonEmpty list: like :func:`lst` but at least one item."""
    items = list(items)
    if not items:
        raise LocalProtocolError("NonEmpty list is empty")
    return lst(items)


# ---------------------------------------------------------------- base64url and padding


def b64url_encode(data: bytes) -> str:
    """base64url **with** ``=`` padding, as the reference encodes (smp.md §0)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Decode base64url, padded or unpadded; anything else is a :class:`ParseError`."""
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError as e:
            raise ParseError("base64url: non-ASCII input") from e
    else:
        raw = text
    stripped = raw.rstrip(b"=")
    if len(raw) - len(stripped) > 2 or len(stripped) % 4 == 1:
        raise ParseError("base64url: bad length or padding")
    if raw != stripped and len(raw) % 4 != 0:
        raise ParseError("base64url: bad padding")
    for c in stripped:
        if not (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A or 0x30 <= c <= 0x39 or c in (0x2D, 0x5F)):
            raise ParseError("base64url: invalid character")
    try:
        return base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as e:  # pragma: no cover - guarded above
        raise ParseError(f"base64url: {e}") from e


def b64_decode(text: str | bytes) -> bytes:
    """Standard base64 (used by JSON fields such as QueueInfo msgId)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ParseError(f"base64: {e}") from e


def pad(message: bytes, padded_len: int) -> bytes:
    """``w16(len) ‖ message ‖ '#'…`` to exactly ``padded_len`` bytes (smp.md §5.1 ``pad``)."""
    n = len(message)
    if n > 65533 or n + 2 > padded_len:
        raise LocalProtocolError(f"message of {n} bytes does not fit padded length {padded_len}")
    return n.to_bytes(2, "big") + message + b"#" * (padded_len - n - 2)


def unpad(padded: bytes) -> bytes:
    """Inverse of :func:`pad`: the pad bytes themselves are not checked (reference ``unPad``)."""
    if len(padded) < 2:
        raise ParseError("unpad: shorter than the length prefix")
    n = int.from_bytes(padded[:2], "big")
    if len(padded) - 2 < n:
        raise ParseError("unpad: length prefix exceeds the data")
    return bytes(padded[2 : 2 + n])


# ---------------------------------------------------------------- decoder


class Reader:
    """A cursor over bytes with total, typed parsing methods.

    Every method either returns a value and advances, or raises :class:`ParseError`.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data) if not isinstance(data, bytes) else data
        self.pos = pos

    # -- basic
    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        """Require that everything was consumed (reference ``parseAll``)."""
        if self.pos != len(self.data):
            raise ParseError(f"{len(self.data) - self.pos} unexpected trailing bytes")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParseError(f"need {n} bytes, have {len(self.data) - self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ParseError("unexpected end of input")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def char(self) -> bytes:
        return bytes((self.byte(),))

    def expect(self, literal: bytes) -> None:
        if self.data[self.pos : self.pos + len(literal)] != literal:
            raise ParseError(f"expected {literal!r}")
        self.pos += len(literal)

    def space(self) -> None:
        self.expect(SPACE)

    def tail(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def word(self) -> bytes:
        """Bytes up to (not including) the next space or the end."""
        i = self.data.find(b" ", self.pos)
        if i < 0:
            i = len(self.data)
        out = self.data[self.pos : i]
        self.pos = i
        return out

    # -- reference primitives
    def sb(self) -> bytes:
        return self.take(self.byte())

    def lg(self) -> bytes:
        return self.take(self.w16())

    def w16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def w32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def i64(self) -> int:
        return int.from_bytes(self.take(8), "big", signed=True)

    def boolean(self) -> bool:
        c = self.byte()
        if c == 0x54:
            return True
        if c == 0x46:
            return False
        raise ParseError("expected 'T' or 'F'")

    def maybe(self, parse: Callable[["Reader"], T]) -> T | None:
        c = self.byte()
        if c == 0x30:
            return None
        if c == 0x31:
            return parse(self)
        raise ParseError("expected Maybe tag '0' or '1'")

    def lst(self, parse: Callable[["Reader"], T]) -> list[T]:
        return [parse(self) for _ in range(self.byte())]

    def ne(self, parse: Callable[["Reader"], T]) -> list[T]:
        n = self.byte()
        if n == 0:
            raise ParseError("NonEmpty list with 0 items")
        return [parse(self) for _ in range(n)]


def parse_all(data: bytes, parse: Callable[[Reader], T]) -> T:
    """Run ``parse`` and require full consumption (reference ``parseAll``)."""
    r = Reader(data)
    value = parse(r)
    r.end()
    return value


# ---------------------------------------------------------------- version ranges


class VersionRange:
    """An inclusive version range ``min..max`` encoded as ``w16 min ‖ w16 max`` (smp.md §1.3)."""

    __slots__ = ("min", "max")

    def __init__(self, vmin: int, vmax: int) -> None:
        if not (0 <= vmin <= vmax <= 0xFFFF):
            raise LocalProtocolError(f"bad version range {vmin}-{vmax}")
        self.min = vmin
        self.max = vmax

    def __repr__(self) -> str:
        return f"VersionRange({self.min}, {self.max})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionRange) and (self.min, self.max) == (other.min, other.max)

    def __hash__(self) -> int:
        return hash((self.min, self.max))

    def __contains__(self, v: object) -> bool:
        return isinstance(v, int) and self.min <= v <= self.max

    def encode(self) -> bytes:
        return w16(self.min) + w16(self.max)

    @staticmethod
    def parse(r: Reader) -> "VersionRange":
        vmin, vmax = r.w16(), r.w16()
        if vmin > vmax:
            raise ParseError(f"version range min {vmin} > max {vmax}")
        return VersionRange(vmin, vmax)

    def intersect(self, other: "VersionRange") -> "VersionRange | None":
        """``compatibleVRange``: max of mins, min of maxes; ``None`` if empty."""
        lo, hi = max(self.min, other.min), min(self.max, other.max)
        return VersionRange(lo, hi) if lo <= hi else None
