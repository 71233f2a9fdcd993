"""The router's store driver: two append-only files, fsync'd, compacted at start (smp.md §6.8, §6.9).

* ``smp-server-store.log`` — the queue store log in the reference's text format
  (:mod:`sansio_smp.store_log`), so a reference router can read it and vice versa.
* ``smp-server-messages.journal`` — this project's message journal (same module).

Durability rules:

* :meth:`StoreFiles.append` writes one batch of lines to both files and fsyncs both before
  returning; the router releases the responses that depend on the batch only after that
  (``OK`` to ``SEND`` is sent after the message is on disk). The removal of a message by
  ``ACK`` is in the same ordered batches, but its reply does not wait for it: a crash that loses
  it re-delivers an acknowledged message (allowed, smp.md §6.3), never loses one
  (:mod:`sansio_smp.router`, "Persistence contract").
* A write that fails (disk full, I/O error) truncates both files back to their last good size,
  so the files never keep a partial record, and raises :class:`StoreWriteError`.
* A crash (SIGKILL, power loss) can leave a torn last line: it was never fsync'd completely,
  so no response depended on it; :meth:`StoreFiles.open` drops it.
* Compaction at start writes the compacted file to ``<name>.tmp``, fsyncs it, renames it over
  the original and fsyncs the directory — a crash at any point leaves either the old or the
  new complete file. The pre-compaction file is kept as ``<name>.bak``. A ``<log>.start`` file
  (the reference's marker of a crash during its own compaction) is used if present.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Iterable

import attrs

from sansio_smp.store_log import (
    Message,
    QueueStore,
    compacted_journal,
    encode_journal_record,
    encode_record,
    restore_messages,
    restore_queue_store,
)

log = logging.getLogger("smp.store")

QUEUE_LOG_NAME = "smp-server-store.log"
JOURNAL_NAME = "smp-server-messages.journal"


class StoreWriteError(OSError):
    """Appending to the store failed; the files were rolled back to the last good batch."""


@attrs.frozen
class RestoredState:
    store: QueueStore
    messages: dict[bytes, list[Message]]
    stored_messages: int
    expired_messages: int
    warnings: list[str]


def read_complete_lines(path: str) -> tuple[list[bytes], bool]:
    """Complete lines of a file (none if it is missing), and whether a torn (unterminated) last
    line was dropped — the crash recovery of every append-only log here (SMP and XFTP)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], False
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    return lines[:-1], torn


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_file_atomically(path: str, lines: Iterable[str], keep_backup: bool = True) -> None:
    """Write ``lines`` to ``path.tmp``, fsync, (back up ``path``), rename over ``path``, fsync dir."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        buf: list[bytes] = []
        size = 0
        for line in lines:
            b = line.encode("ascii") + b"\n"
            buf.append(b)
            size += len(b)
            if size > 1 << 20:
                _write_all(fd, b"".join(buf))
                buf, size = [], 0
        if buf:
            _write_all(fd, b"".join(buf))
        os.fsync(fd)
    finally:
        os.close(fd)
    if keep_backup and os.path.exists(path):
        os.replace(path, path + ".bak")
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class AppendFile:
    """One append-only file with a known good size: :meth:`rollback` after a failed write
    truncates back to it, so the file never keeps part of a record (SMP store, XFTP store log)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.dirty = False  # a failed write may have left bytes past ``size``

    def write(self, data: bytes) -> None:
        if self.dirty:
            os.ftruncate(self.fd, self.size)
            self.dirty = False
        os.lseek(self.fd, self.size, os.SEEK_SET)
        self.dirty = True
        _write_all(self.fd, data)

    def sync(self) -> None:
        os.fsync(self.fd)

    def commit(self) -> None:
        self.size = os.lseek(self.fd, 0, os.SEEK_CUR)
        self.dirty = False

    def rollback(self) -> None:
        try:
            os.ftruncate(self.fd, self.size)
            self.dirty = False
        except OSError:
            self.dirty = True  # retried before the next write

    def close(self) -> None:
        os.close(self.fd)


class StoreFiles:
    """The two store files of one router directory."""

    def __init__(self, directory: str, queue_log_name: str = QUEUE_LOG_NAME, journal_name: str = JOURNAL_NAME) -> None:
        self.directory = directory
        self.queue_log_path = os.path.join(directory, queue_log_name)
        self.journal_path = os.path.join(directory, journal_name)
        self._queue_log: AppendFile | None = None
        self._journal: AppendFile | None = None

    # -- start
    def open(self, now: float, message_ttl: int | None, restore_messages_: bool = True) -> RestoredState:
        """Recover, restore and compact both files, then open them for appending.

        The cyclic GC is paused meanwhile: restoring creates a few long-lived, acyclic objects per
        queue, and the collections their allocation triggers took ~40% of the restore time."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._open(now, message_ttl, restore_messages_)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _open(self, now: float, message_ttl: int | None, restore_messages_: bool) -> RestoredState:
        os.makedirs(self.directory, exist_ok=True)
        start_backup = self.queue_log_path + ".start"
        if os.path.exists(start_backup):
            log.warning("store log: the reference router stopped during compaction; restoring from %s", start_backup)
            if os.path.exists(self.queue_log_path):
                os.replace(self.queue_log_path, self.queue_log_path + ".incomplete")
            os.replace(start_backup, self.queue_log_path)
        q_lines, q_torn = read_complete_lines(self.queue_log_path)
        if q_torn:
            log.warning("store log: dropped a torn last line (unclean stop)")
        store, warnings = restore_queue_store(q_lines)
        j_lines, j_torn = read_complete_lines(self.journal_path) if restore_messages_ else ([], False)
        if j_torn:
            log.warning("message journal: dropped a torn last line (unclean stop)")
        restored = restore_messages(j_lines, store.queues, now, message_ttl)
        warnings = warnings + restored.warnings
        for w in warnings:
            log.warning("store: %s", w)
        self.compact(store, restored.queues, keep_backup=True)
        return RestoredState(store, restored.queues, restored.stored, restored.expired, warnings)

    def compact(self, store: QueueStore, messages: dict[bytes, "Iterable[Message]"], keep_backup: bool = False) -> None:
        """Rewrite both files from the given state (at start, or when nothing is in flight)."""
        self._close_files()
        write_file_atomically(self.queue_log_path, (encode_record(r) for r in store.compacted_records()), keep_backup)
        write_file_atomically(
            self.journal_path, (encode_journal_record(r) for r in compacted_journal(messages)), keep_backup
        )
        self._queue_log = AppendFile(self.queue_log_path)
        self._journal = AppendFile(self.journal_path)

    @property
    def journal_size(self) -> int:
        return self._journal.size if self._journal else 0

    # -- running
    def append(self, queue_log_lines: list[str], journal_lines: list[str]) -> None:
        """Append one batch to both files and fsync them; :class:`StoreWriteError` on failure
        (then neither file keeps any byte of the batch)."""
        if self._queue_log is None or self._journal is None:
            raise StoreWriteError("store files are not open")
        files = []
        try:
            # The queue log is made durable first: a crash in between can then only lose journal
            # records of a batch that was never acknowledged, and a queue deleted in the log has
            # its messages dropped on restore whatever the journal says.
            for f, lines in ((self._queue_log, queue_log_lines), (self._journal, journal_lines)):
                if lines:
                    files.append(f)
                    f.write("".join(line + "\n" for line in lines).encode("ascii"))
                    f.sync()
        except OSError as e:
            for f in files:
                f.rollback()
            raise StoreWriteError(e.errno, f"store write failed: {e.strerror or e}") from e
        for f in files:
            f.commit()

    def _close_files(self) -> None:
        for f in (self._queue_log, self._journal):
            if f is not None:
                f.close()
        self._queue_log = self._journal = None

    def close(self) -> None:
        self._close_files()
