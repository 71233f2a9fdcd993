"""The XFTP server machine: file store, authorization, quota, expiry, deletion (xftp-ntf.md §1.6, §1.13).

Pure: :meth:`XFTPServer.handle` takes a decoded request (and ``now``) and returns what to do —
a response to send, a chunk body to receive into a file, a body to drain, or a stored chunk to
stream back encrypted — plus the store-log records to append and the chunk files to remove. The
runtime (:mod:`transports.xftp_runtime`) does the I/O and reports back (:meth:`XFTPServer.upload_complete`).
Randomness (IDs, FGET keys and nonces) comes from the injected ``random_bytes``.

Behaviour follows ``Server.hs`` ``verifyXFTPTransmission``/``processXFTPRequest``: unknown IDs,
the wrong party and bad signatures are all ``AUTH`` (after a dummy verification, for timing);
a blocked file is ``BLOCKED`` (sent as ``AUTH`` below v3); an upload to an already uploaded chunk
is drained and answered ``OK`` without changing it.
"""

from __future__ import annotations

import posixpath
from typing import Callable, Iterable, Union

import attrs

from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import b64url_encode
from sansio_smp.errors import CryptoError
from sansio_smp.expiration import (  # shared with the SMP router; re-exported here
    DEFAULT_INACTIVE_CLIENT_CHECK,
    DEFAULT_INACTIVE_CLIENT_TTL,
    InactiveClients,
    client_inactive,
)

from . import protocol as p
from .file_crypto import SERVER_CHUNK_SIZES
from .store_log import (
    ACTIVE,
    AckFile,
    AddFile,
    AddRecipients,
    BlockFile,
    DeleteFile,
    PutFile,
    Record,
    Status,
)

RandomBytes = Callable[[int], bytes]
FILE_TIME_PRECISION = 3600  # createdAt is rounded down to the hour (RoundedFileTime)
DEFAULT_FILE_EXPIRATION = 48 * 3600
ID_RETRIES = 3


def rounded_time(now: float) -> int:
    return int(now) // FILE_TIME_PRECISION * FILE_TIME_PRECISION


# ---------------------------------------------------------------- store


@attrs.define
class FileRec:
    sender_id: bytes
    file_info: p.FileInfo
    created_at: int
    status: Status = ACTIVE
    path: str | None = None
    recipients: set[bytes] = attrs.Factory(set)
    uploading: bool = False


class FileStore:
    """``STMFileStore``: files by sender ID, recipients by recipient ID."""

    def __init__(self) -> None:
        self.files: dict[bytes, FileRec] = {}
        self.recipients: dict[bytes, tuple[bytes, PublicKey]] = {}

    def add_file(
        self, sender_id: bytes, info: p.FileInfo, created_at: int, status: Status = ACTIVE
    ) -> p.XFTPError | None:
        if sender_id in self.files:
            return p.XFTPError("DUPLICATE_")
        self.files[sender_id] = FileRec(sender_id, info, created_at, status)
        return None

    def set_file_path(self, sender_id: bytes, path: str) -> p.XFTPError | None:
        rec = self.files.get(sender_id)
        if rec is None or rec.path is not None or rec.status != ACTIVE:
            return p.AUTH
        rec.path = path
        return None

    def add_recipient(self, sender_id: bytes, rid: bytes, key: PublicKey) -> p.XFTPError | None:
        rec = self.files.get(sender_id)
        if rec is None:
            return p.AUTH
        if rid in rec.recipients or rid in self.recipients:
            return p.XFTPError("DUPLICATE_")
        rec.recipients.add(rid)
        self.recipients[rid] = (sender_id, key)
        return None

    def delete_file(self, sender_id: bytes) -> p.XFTPError | None:
        rec = self.files.pop(sender_id, None)
        if rec is None:
            return p.AUTH
        for rid in rec.recipients:
            self.recipients.pop(rid, None)
        return None

    def block_file(self, sender_id: bytes, info: p.BlockingInfo) -> p.XFTPError | None:
        rec = self.files.get(sender_id)
        if rec is None:
            return p.AUTH
        rec.status = info
        return None

    def ack_file(self, rid: bytes) -> p.XFTPError | None:
        entry = self.recipients.pop(rid, None)
        if entry is None:
            return p.AUTH
        rec = self.files.get(entry[0])
        if rec is None:
            return p.AUTH
        rec.recipients.discard(rid)
        return None

    def get_file(self, party: str, file_id: bytes) -> tuple[FileRec, PublicKey] | None:
        if party == "sender":
            rec = self.files.get(file_id)
            return None if rec is None else (rec, rec.file_info.snd_key)
        entry = self.recipients.get(file_id)
        if entry is None:
            return None
        rec = self.files.get(entry[0])
        return None if rec is None else (rec, entry[1])

    def expired_files(self, old: int) -> list[FileRec]:
        return [r for r in self.files.values() if r.created_at + FILE_TIME_PRECISION < old]

    def used_storage(self) -> int:
        """Bytes of uploaded chunks (the reference also counts files never uploaded)."""
        return sum(r.file_info.size for r in self.files.values() if r.path is not None)

    # -- store log
    def apply(self, rec: Record) -> p.XFTPError | None:
        """Apply one restored log record (``readFileStore``)."""
        if isinstance(rec, AddFile):
            if rec.file_info.size <= 0:
                return p.SIZE
            return self.add_file(rec.sender_id, rec.file_info, rec.created_at, rec.status)
        if isinstance(rec, PutFile):
            return self.set_file_path(rec.sender_id, rec.path)
        if isinstance(rec, AddRecipients):
            for rid, key in rec.recipients:
                err = self.add_recipient(rec.sender_id, rid, key)
                if err is not None:
                    return err
            return None
        if isinstance(rec, DeleteFile):
            return self.delete_file(rec.sender_id)
        if isinstance(rec, BlockFile):
            return self.block_file(rec.sender_id, rec.info)
        return self.ack_file(rec.recipient_id)

    def snapshot(self) -> list[Record]:
        """The compacted log (``writeFileStore``)."""
        out: list[Record] = []
        for rec in self.files.values():
            out.append(AddFile(rec.sender_id, rec.file_info, rec.created_at, rec.status))
            rcps = [(rid, self.recipients[rid][1]) for rid in sorted(rec.recipients) if rid in self.recipients]
            if rcps:
                out.append(AddRecipients(rec.sender_id, tuple(rcps)))
            if rec.path is not None:
                out.append(PutFile(rec.sender_id, rec.path))
        return out


# ---------------------------------------------------------------- outcomes


@attrs.frozen
class Respond:
    """Send ``response``; append ``records`` to the store log; delete ``remove`` chunk files."""

    response: p.Response
    records: tuple[Record, ...] = ()
    remove: tuple[str, ...] = ()


@attrs.frozen
class ReceiveChunk:
    """FPUT: receive exactly ``size`` bytes into ``path`` (SHA-256 must equal ``digest``), then
    call :meth:`XFTPServer.upload_complete`."""

    sender_id: bytes
    path: str
    size: int
    digest: bytes


@attrs.frozen
class DrainChunk:
    """FPUT of an already uploaded chunk: read and discard the body; ``OK`` if it is exactly
    ``size`` bytes, else ``SIZE`` (the stored chunk is not changed)."""

    size: int


@attrs.frozen
class SendChunk:
    """FGET: answer ``response`` (FILE) followed by the chunk at ``path`` (``size`` bytes)
    encrypted with ``SecretBoxStream(dh_secret, nonce)`` and its tag. If the file is missing on
    disk, answer ``AUTH`` instead."""

    response: p.FILE
    path: str
    size: int
    dh_secret: bytes
    nonce: bytes


Outcome = Union[Respond, ReceiveChunk, DrainChunk, SendChunk]


@attrs.frozen
class ServerConfig:
    """What the machine needs from ``file-server.ini`` (§1.14)."""

    files_path: str
    allowed_chunk_sizes: tuple[int, ...] = SERVER_CHUNK_SIZES
    quota: int | None = None
    allow_new_files: bool = True
    new_file_password: bytes | None = None
    file_expiration: int | None = DEFAULT_FILE_EXPIRATION  # seconds
    file_id_size: int = p.FILE_ID_SIZE


_DUMMY = {
    KeyAlgorithm.ED25519: PrivateKey(KeyAlgorithm.ED25519, bytes(range(32))).public(),
    KeyAlgorithm.ED448: PrivateKey(KeyAlgorithm.ED448, bytes(range(57))).public(),
}
_DUMMY_X25519 = PrivateKey(KeyAlgorithm.X25519, bytes(range(1, 33))).public()


# ---------------------------------------------------------------- the machine


class XFTPServer:
    def __init__(self, config: ServerConfig, random_bytes: RandomBytes, store: FileStore | None = None) -> None:
        self.config = config
        self.random_bytes = random_bytes
        self.store = store or FileStore()
        self.used_storage = self.store.used_storage()
        self.stats = {"created": 0, "uploaded": 0, "downloads": 0, "deleted": 0, "expired": 0, "acks": 0}

    # -- helpers
    def chunk_path(self, sender_id: bytes) -> str:
        """``<files path>/<base64url(senderId)>``."""
        return posixpath.join(self.config.files_path, b64url_encode(sender_id))

    def _reserve(self, size: int) -> bool:
        quota = self.config.quota
        if quota is not None and self.used_storage + size > quota:
            return False
        self.used_storage += size
        return True

    def _release(self, size: int) -> None:
        self.used_storage = max(0, self.used_storage - size)

    def _new_id(self, taken: Callable[[bytes], bool]) -> bytes | None:
        for _ in range(ID_RETRIES):
            fid = self.random_bytes(self.config.file_id_size)
            if not taken(fid):
                return fid
        return None

    @staticmethod
    def _dummy_verify(req: p.Request, session_priv: PrivateKey | None) -> None:
        alg = {64: KeyAlgorithm.ED25519, 114: KeyAlgorithm.ED448}.get(len(req.auth))
        if alg is not None:
            _DUMMY[alg].verify(req.auth, req.authorized)
        elif req.auth:
            p.verify_auth(req.auth, req.authorized, req.corr_id, _DUMMY_X25519, session_priv)

    # -- requests
    def handle(self, req: p.Request, now: float, session_priv: PrivateKey | None = None) -> Outcome:
        cmd = req.command
        if isinstance(cmd, p.PING):
            return Respond(p.PONG())
        if isinstance(cmd, p.FNEW):
            if not p.verify_auth(req.auth, req.authorized, req.corr_id, cmd.file_info.snd_key, session_priv):
                return Respond(p.ERR(p.AUTH))
            return self._create(cmd, now)
        found = self.store.get_file(cmd.party, req.entity_id)
        if found is None:
            self._dummy_verify(req, session_priv)
            return Respond(p.ERR(p.AUTH))
        rec, key = found
        if isinstance(rec.status, p.BlockingInfo):
            return Respond(p.ERR(p.XFTPError("BLOCKED", block_info=rec.status)))
        if rec.status != ACTIVE:
            self._dummy_verify(req, session_priv)
            return Respond(p.ERR(p.AUTH))
        if not p.verify_auth(req.auth, req.authorized, req.corr_id, key, session_priv):
            return Respond(p.ERR(p.AUTH))
        if isinstance(cmd, p.FADD):
            return self._add_recipients(rec.sender_id, cmd.rcv_keys)
        if isinstance(cmd, p.FPUT):
            return self._put(rec)
        if isinstance(cmd, p.FDEL):
            return self._delete(rec)
        if isinstance(cmd, p.FGET):
            return self._get(rec, cmd.dh_key)
        if isinstance(cmd, p.FACK):
            self.store.ack_file(req.entity_id)
            self.stats["acks"] += 1
            return Respond(p.OK(), (AckFile(req.entity_id),))
        return Respond(p.ERR(p.INTERNAL))  # pragma: no cover - all commands handled above

    def _create(self, cmd: p.FNEW, now: float) -> Respond:
        cfg = self.config
        allowed = cfg.allow_new_files and (cfg.new_file_password is None or cfg.new_file_password == cmd.basic_auth)
        if not allowed:
            return Respond(p.ERR(p.AUTH))
        if cmd.file_info.size not in cfg.allowed_chunk_sizes:
            return Respond(p.ERR(p.SIZE))
        sid = self._new_id(lambda i: i in self.store.files)
        if sid is None:
            return Respond(p.ERR(p.INTERNAL))
        created = rounded_time(now)
        self.store.add_file(sid, cmd.file_info, created)
        rcps = self._new_recipients(sid, cmd.rcv_keys)
        if rcps is None:
            self.store.delete_file(sid)
            return Respond(p.ERR(p.INTERNAL))
        self.stats["created"] += 1
        records = (AddFile(sid, cmd.file_info, created), AddRecipients(sid, rcps))
        return Respond(p.SIDS(sid, [r for r, _ in rcps]), records)

    def _new_recipients(self, sid: bytes, keys: Iterable[PublicKey]) -> tuple[tuple[bytes, PublicKey], ...] | None:
        out = []
        for key in keys:
            rid = self._new_id(lambda i: i in self.store.recipients or i in self.store.files)
            if rid is None:
                return None
            self.store.add_recipient(sid, rid, key)
            out.append((rid, key))
        return tuple(out)

    def _add_recipients(self, sid: bytes, keys: tuple[PublicKey, ...]) -> Respond:
        rcps = self._new_recipients(sid, keys)
        if rcps is None:
            return Respond(p.ERR(p.INTERNAL))
        return Respond(p.RIDS([r for r, _ in rcps]), (AddRecipients(sid, rcps),))

    def _put(self, rec: FileRec) -> Outcome:
        size = rec.file_info.size
        if rec.path is not None or rec.uploading:
            return DrainChunk(size)
        if not self._reserve(size):
            return Respond(p.ERR(p.QUOTA))
        rec.uploading = True
        return ReceiveChunk(rec.sender_id, self.chunk_path(rec.sender_id), size, rec.file_info.digest)

    def upload_complete(self, sender_id: bytes, path: str, error: p.XFTPError | None) -> Respond:
        """Report the end of a :class:`ReceiveChunk`: ``error`` is ``None`` when exactly the
        declared size was received and the digest matched (the file is at ``path``)."""
        rec = self.store.files.get(sender_id)
        size = rec.file_info.size if rec is not None else 0
        if rec is not None:
            rec.uploading = False
        if error is not None:
            self._release(size)
            return Respond(p.ERR(error), remove=(path,))
        if rec is None or self.store.set_file_path(sender_id, path) is not None:
            self._release(size)
            return Respond(p.ERR(p.AUTH), remove=(path,))
        self.stats["uploaded"] += 1
        return Respond(p.OK(), (PutFile(sender_id, path),))

    def _delete(self, rec: FileRec) -> Respond:
        remove = ()
        if rec.path is not None:
            remove = (rec.path,)
            self._release(rec.file_info.size)
        self.store.delete_file(rec.sender_id)
        self.stats["deleted"] += 1
        return Respond(p.OK(), (DeleteFile(rec.sender_id),), remove)

    def _get(self, rec: FileRec, rcv_dh: PublicKey) -> Outcome:
        if rec.path is None:
            return Respond(p.ERR(p.NO_FILE))
        srv = PrivateKey.generate(KeyAlgorithm.X25519, self.random_bytes)
        nonce = self.random_bytes(p.NONCE_SIZE)
        try:
            secret = srv.dh(rcv_dh)
        except CryptoError:
            return Respond(p.ERR(p.INTERNAL))
        self.stats["downloads"] += 1
        return SendChunk(p.FILE(srv.public(), nonce), rec.path, rec.file_info.size, secret, nonce)

    # -- maintenance
    def expire(self, now: float) -> Respond:
        """``expireServerFiles``: files older than the TTL are removed (logged as FDEL). The
        ``response`` of the result is ``OK`` and carries nothing."""
        ttl = self.config.file_expiration
        if ttl is None:
            return Respond(p.OK())
        old = int(now) - ttl
        records, remove = [], []
        for rec in self.store.expired_files(old):
            if rec.uploading:
                continue
            if rec.path is not None:
                remove.append(rec.path)
                self._release(rec.file_info.size)
            self.store.delete_file(rec.sender_id)
            records.append(DeleteFile(rec.sender_id))
            self.stats["expired"] += 1
        return Respond(p.OK(), tuple(records), tuple(remove))

    def delete_by_recipient(self, rid: bytes) -> Respond:
        """Control-port ``delete <id>`` (the ID is a recipient ID, as in the reference)."""
        found = self.store.get_file("recipient", rid)
        if found is None:
            return Respond(p.ERR(p.AUTH))
        return self._delete(found[0])

    def block_by_recipient(self, rid: bytes, info: p.BlockingInfo) -> Respond:
        """Control-port ``block <id> <info>``: the chunk is deleted and the record kept blocked."""
        found = self.store.get_file("recipient", rid)
        if found is None:
            return Respond(p.ERR(p.AUTH))
        rec = found[0]
        remove = ()
        if rec.path is not None:
            remove = (rec.path,)
            self._release(rec.file_info.size)
            rec.path = None
        self.store.block_file(rec.sender_id, info)
        return Respond(p.OK(), (BlockFile(rec.sender_id, info),), remove)


__all__ = [
    "DEFAULT_FILE_EXPIRATION",
    "DEFAULT_INACTIVE_CLIENT_CHECK",
    "DEFAULT_INACTIVE_CLIENT_TTL",
    "DrainChunk",
    "FileRec",
    "FileStore",
    "InactiveClients",
    "Outcome",
    "ReceiveChunk",
    "Respond",
    "SendChunk",
    "ServerConfig",
    "XFTPServer",
    "client_inactive",
    "rounded_time",
]
