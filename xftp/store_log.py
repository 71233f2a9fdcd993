"""The XFTP server store log: records, their text lines, restore and compaction (xftp-ntf.md §1.13).

Pure: lines in, store out; the runtime appends the lines to ``file-server-store.log``. The text
format is the reference's (``Server/StoreLog.hs``), so either server can read the other's log::

    FNEW <sId> <sndKey> <size> <digest> <createdAt> <status>
    FPUT <sId> <base64url(path)>
    FADD <sId> <rId>:<rKey>,<rId>:<rKey>…
    FDEL <sId>
    FBLK <sId> reason=…[,notice=…]
    FACK <rId>

(IDs, keys (DER SPKI) and digests base64url; the path is base64url of its bytes, as the
reference ``strEncode``s a ``FilePath``; status ``active``, ``blocked,<info>`` or ``off``.)
"""

from __future__ import annotations

from typing import Iterable, Union

import attrs

from sansio_smp.crypto import PublicKey
from sansio_smp.encoding import b64url_decode, b64url_encode
from sansio_smp.errors import ParseError
from sansio_smp.protocol import BlockingInfo
from sansio_smp.store_log import ACTIVE, OFF, Status, encode_status, parse_status

from .protocol import FileInfo


@attrs.frozen
class AddFile:
    sender_id: bytes
    file_info: FileInfo
    created_at: int
    status: Status = ACTIVE


@attrs.frozen
class PutFile:
    sender_id: bytes
    path: str


@attrs.frozen
class AddRecipients:
    sender_id: bytes
    recipients: tuple[tuple[bytes, PublicKey], ...] = attrs.field(converter=tuple)


@attrs.frozen
class DeleteFile:
    sender_id: bytes


@attrs.frozen
class BlockFile:
    sender_id: bytes
    info: BlockingInfo


@attrs.frozen
class AckFile:
    recipient_id: bytes


Record = Union[AddFile, PutFile, AddRecipients, DeleteFile, BlockFile, AckFile]


def _b(data: bytes) -> str:
    return b64url_encode(data)


def _key(key: PublicKey) -> str:
    return b64url_encode(key.spki())


def encode_record(r: Record) -> str:
    """One log line (without the newline)."""
    if isinstance(r, AddFile):
        fi = r.file_info
        return f"FNEW {_b(r.sender_id)} {_key(fi.snd_key)} {fi.size} {_b(fi.digest)} {r.created_at} {encode_status(r.status)}"
    if isinstance(r, PutFile):
        return f"FPUT {_b(r.sender_id)} {_b(r.path.encode('utf-8'))}"
    if isinstance(r, AddRecipients):
        return f"FADD {_b(r.sender_id)} " + ",".join(f"{_b(rid)}:{_key(k)}" for rid, k in r.recipients)
    if isinstance(r, DeleteFile):
        return f"FDEL {_b(r.sender_id)}"
    if isinstance(r, BlockFile):
        return f"FBLK {_b(r.sender_id)} {r.info.encode().decode()}"
    return f"FACK {_b(r.recipient_id)}"


def _id(text: str) -> bytes:
    if not text:
        raise ParseError("empty id")
    return b64url_decode(text)


def _pub(text: str) -> PublicKey:
    return PublicKey.from_spki(_id(text))


def parse_record(line: str) -> Record:
    """Parse one line; :class:`ParseError` if it is not a record."""
    tag, _, rest = line.rstrip("\r\n").partition(" ")
    parts = rest.split(" ")
    try:
        if tag == "FNEW":
            if len(parts) not in (5, 6):
                raise ParseError("FNEW: wrong number of fields")
            size = int(parts[2])
            if not 0 <= size <= 0xFFFFFFFF:
                raise ParseError("FNEW: bad size")
            status = parse_status(parts[5]) if len(parts) == 6 else ACTIVE
            info = FileInfo(_pub(parts[1]), size, _id(parts[3]))
            return AddFile(_id(parts[0]), info, int(parts[4]), status)
        if tag == "FPUT" and len(parts) == 2:
            return PutFile(_id(parts[0]), _id(parts[1]).decode("utf-8"))
        if tag == "FADD" and len(parts) == 2:
            rcps = []
            for item in parts[1].split(","):
                rid, sep, key = item.partition(":")
                if not sep:
                    raise ParseError("FADD: bad recipient")
                rcps.append((_id(rid), _pub(key)))
            return AddRecipients(_id(parts[0]), tuple(rcps))
        if tag == "FDEL" and len(parts) == 1:
            return DeleteFile(_id(parts[0]))
        if tag == "FBLK" and len(parts) == 2:
            return BlockFile(_id(parts[0]), BlockingInfo.decode(parts[1].encode()))
        if tag == "FACK" and len(parts) == 1:
            return AckFile(_id(parts[0]))
    except (ValueError, UnicodeDecodeError) as e:
        raise ParseError(f"bad store log line: {e}") from e
    raise ParseError(f"bad store log line {line[:40]!r}")


def restore(lines: Iterable[str], store: "object") -> list[str]:
    """Apply log lines to a :class:`xftp.server.FileStore` (``readFileStore``); bad or
    inapplicable lines are skipped and reported (the reference prints and continues)."""
    warnings: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = parse_record(line)
        except ParseError as e:
            warnings.append(f"line {n}: log parsing error: {e}")
            continue
        err = store.apply(rec)  # type: ignore[attr-defined]
        if err is not None:
            warnings.append(f"line {n}: log processing error: {err}")
    return warnings


def compacted(store: "object") -> list[str]:
    """``writeFileStore``: per file FNEW, FADD (all its recipients, if any), FPUT (if uploaded)."""
    return [encode_record(r) for r in store.snapshot()]  # type: ignore[attr-defined]


__all__ = [
    "ACTIVE",
    "AckFile",
    "AddFile",
    "AddRecipients",
    "BlockFile",
    "DeleteFile",
    "OFF",
    "PutFile",
    "Record",
    "compacted",
    "encode_record",
    "parse_record",
    "restore",
]
