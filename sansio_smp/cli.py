"""``smp``: a queue-level SMP client for scripts and small devices (no agent, no ratchet).

Commands (``smp <command> --help`` for details)::

    smp [--state FILE] create SERVER_ADDRESS [--name N]     # new queue; prints its SMP queue URI
    smp [--state FILE] send QUEUE_URI [MESSAGE | -]         # send one message (stdin with - or none)
    smp [--state FILE] receive [N] [--follow] [--timeout S] # print messages, one per line, and ACK them
    smp [--state FILE] delete N                             # delete a queue on the router
    smp [--state FILE] list                                 # the queues in the state file

What happens on the wire (smp.md §4, §5.3, §5.4, §6):

* ``create`` connects over TLS to ``smp://<keyhash>[:password]@host[:port]`` (the key hash is checked
  against the router's certificate chain), sends ``NEW`` for a *messaging-mode* queue (the sender may
  secure it with ``SKEY``), and prints the queue URI
  ``smp://<keyhash>@host[:port]/<senderId>#/?v=1-4&dh=<recipient e2e X25519 key>&q=m&k=s``.
* ``send`` generates (once per queue URI, kept in the state file) an Ed25519 sender key and an X25519
  e2e key. On first use it secures the queue with ``SKEY``; every message is a signed ``SEND`` of the
  per-queue e2e envelope (``ClientMsgEnvelope``, §5.4) encrypted with X25519(sender e2e key, ``dh=``).
  **What the recipient needs:** the sender's e2e public key, to compute the same secret. It travels in
  the ``PubHeader`` of the first message only (the "confirmation", padded to 15904 bytes, as the
  reference agent does); later messages carry no key (padded to 16000). The recipient stores the key
  from the confirmation. A queue URI without ``k=s`` (a queue the sender cannot secure) gets an
  *unsigned* confirmation whose ``PrivHeader`` carries the sender's auth key; ``receive`` then secures
  the queue with ``KEY`` — until that happened, further messages are refused with ``AUTH``.
* ``receive`` without ``--follow``/``--timeout`` drains each queue with ``GET``/``ACK`` and exits when it
  is empty; with them it subscribes (``SUB``) and prints pushed messages until interrupted, or until no
  message arrived for ``--timeout`` seconds. Each message is written to stdout followed by a newline,
  then acknowledged (so a crash can repeat the last message, never lose one). Quota markers and
  undecryptable messages are reported on stderr and acknowledged.

Keys and queue state live in a JSON state file (``--state``, else ``$SMP_STATE``, else
``~/.smp-client.json``), written atomically with mode 0600. It holds private keys: keep it safe.

Exit codes: 0 ok, 1 other error, 2 usage (bad URI/address, unknown queue, message too long),
3 cannot connect (refused, TLS or identity failure, timeout), 4 ``ERR AUTH``, 5 ``ERR QUOTA``,
6 other router errors (``LARGE_MSG``, ``CMD …`` …).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import tempfile
from typing import Any, Sequence

import anyio

from . import client as c
from . import messages as m
from . import protocol as p
from .addresses import ProtocolServer, QueueMode, SMPQueueUri, parse_server_with_auth
from .crypto import PrivateKey, PublicKey
from .encoding import b64url_decode, b64url_encode
from .errors import ParseError, ProtocolError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_AUTH = 4
EXIT_QUOTA = 5
EXIT_ROUTER = 6

STATE_VERSION = 1


class CLIError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def default_state_path() -> str:
    return os.environ.get("SMP_STATE") or os.path.join(os.path.expanduser("~"), ".smp-client.json")


# ---------------------------------------------------------------- state file


def _b64(data: bytes) -> str:
    return b64url_encode(data)


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise CLIError(f"state file: {what} is missing")
    try:
        return b64url_decode(text)
    except ParseError as e:
        raise CLIError(f"state file: bad {what}: {e}") from None


def _mode_str(mode: QueueMode | None) -> str | None:
    return None if mode is None else mode.value.decode()


def _mode(text: Any) -> QueueMode | None:
    return {"M": QueueMode.MESSAGING, "C": QueueMode.CONTACT}.get(text) if isinstance(text, str) else None


class State:
    """The JSON state file: recipient queues (by name) and sender records (by queue URI)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queues: list[dict[str, Any]] = []
        self.senders: dict[str, dict[str, Any]] = {}

    @classmethod
    def load(cls, path: str) -> "State":
        st = cls(path)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return st
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise CLIError(f"cannot read state file {path}: {e}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise CLIError(f"state file {path}: not an smp state file (version {STATE_VERSION})")
        queues, senders = data.get("queues", []), data.get("senders", {})
        if not isinstance(queues, list) or not isinstance(senders, dict):
            raise CLIError(f"state file {path}: malformed")
        st.queues = [q for q in queues if isinstance(q, dict)]
        st.senders = {k: v for k, v in senders.items() if isinstance(v, dict)}
        return st

    def save(self) -> None:
        """Atomic replace: a temporary file in the same directory, fsync, rename, fsync the directory."""
        data = json.dumps({"version": STATE_VERSION, "queues": self.queues, "senders": self.senders}, indent=2)
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".smp-state-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data.encode("utf-8") + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # pragma: no cover - platforms without directory fsync
            pass

    # -- recipient queues

    def next_name(self) -> str:
        names = {q.get("name") for q in self.queues}
        i = len(self.queues) + 1
        while f"q{i}" in names:
            i += 1
        return f"q{i}"

    def find(self, name: str) -> dict[str, Any]:
        for q in self.queues:
            if q.get("name") == name:
                return q
        if name.isdigit() and 1 <= int(name) <= len(self.queues):
            return self.queues[int(name) - 1]
        known = ", ".join(str(q.get("name")) for q in self.queues) or "none"
        raise CLIError(f"no queue named {name!r} in {self.path} (queues: {known})", EXIT_USAGE)

    @staticmethod
    def queue_record(name: str, q: c.RecipientQueue, uri: str) -> dict[str, Any]:
        assert q.server is not None and q.e2e_key is not None
        return {
            "name": name,
            "server": q.server.to_str(),
            "uri": uri,
            "rcv_id": _b64(q.rcv_id),
            "snd_id": _b64(q.snd_id),
            "rcv_auth_key": _b64(q.rcv_auth_key.pkcs8()),
            "rcv_dh_secret": _b64(q.rcv_dh_secret),
            "e2e_key": _b64(q.e2e_key.pkcs8()),
            "queue_mode": _mode_str(q.queue_mode),
            "sender_e2e_key": None,
            "secured": False,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    @staticmethod
    def recipient_queue(rec: dict[str, Any]) -> c.RecipientQueue:
        try:
            server = ProtocolServer.from_str(str(rec.get("server")))
            rcv_auth = PrivateKey.from_pkcs8(_unb64(rec.get("rcv_auth_key"), "rcv_auth_key"))
            e2e = PrivateKey.from_pkcs8(_unb64(rec.get("e2e_key"), "e2e_key"))
            sender = rec.get("sender_e2e_key")
            sender_key = PublicKey.from_spki(_unb64(sender, "sender_e2e_key")) if sender else None
        except ProtocolError as e:
            raise CLIError(f"state file: queue {rec.get('name')!r} is corrupt: {e}") from None
        return c.RecipientQueue(
            server,
            _unb64(rec.get("rcv_id"), "rcv_id"),
            _unb64(rec.get("snd_id"), "snd_id"),
            rcv_auth,
            _unb64(rec.get("rcv_dh_secret"), "rcv_dh_secret"),
            e2e,
            _mode(rec.get("queue_mode")),
            sender_key,
        )

    # -- senders

    @staticmethod
    def sender_key(uri: SMPQueueUri) -> str:
        a = uri.address
        return f"{a.server.to_str()}/{_b64(a.sender_id)}"

    @staticmethod
    def sender_record(uri_text: str, sq: c.SenderQueue) -> dict[str, Any]:
        return {
            "uri": uri_text,
            "snd_auth_key": _b64(sq.snd_auth_key.pkcs8()),
            "e2e_key": _b64(sq.e2e_key.pkcs8()),
            "client_version": sq.client_version,
            "secured": sq.secured,
            "confirmed": sq.confirmed,
        }

    @staticmethod
    def sender_queue(rec: dict[str, Any], uri: SMPQueueUri) -> c.SenderQueue:
        try:
            sq = c.SenderQueue.from_uri(uri, os.urandom)
            sq.snd_auth_key = PrivateKey.from_pkcs8(_unb64(rec.get("snd_auth_key"), "snd_auth_key"))
            sq.e2e_key = PrivateKey.from_pkcs8(_unb64(rec.get("e2e_key"), "e2e_key"))
        except ProtocolError as e:
            raise CLIError(f"state file: sender record is corrupt: {e}") from None
        v = rec.get("client_version")
        if isinstance(v, int) and v in uri.versions:
            sq.client_version = v
        sq.secured = bool(rec.get("secured"))
        sq.confirmed = bool(rec.get("confirmed"))
        return sq


# ---------------------------------------------------------------- connecting and errors


def _describe_router_error(err: p.ErrorType) -> tuple[str, int]:
    text = err.encode().decode("utf-8", "replace")
    if err == p.AUTH:
        return "the router refused the command (AUTH: wrong key, unknown or secured queue)", EXIT_AUTH
    if err == p.QUOTA:
        return "the queue is full (QUOTA): the recipient must receive messages first", EXIT_QUOTA
    if err == p.LARGE_MSG:
        return "the message is too large for the router (LARGE_MSG)", EXIT_ROUTER
    return f"the router answered ERR {text}", EXIT_AUTH if text.startswith("BLOCKED") else EXIT_ROUTER


def _cli_error(e: BaseException, where: str) -> CLIError:
    """Turn a connection or protocol failure into a one-line message and an exit code."""
    from transports.client_runtime import HandshakeFailed
    from transports.tls import TLSHandshakeError

    from .x509 import CertificateError

    if isinstance(e, CLIError):
        return e
    if isinstance(e, c.SMPErrorResponse):
        msg, code = _describe_router_error(e.error)
        return CLIError(msg, code)
    if isinstance(e, CertificateError):
        return CLIError(f"{where}: the router's certificate does not match the address key hash ({e})", EXIT_CONNECT)
    if isinstance(e, TLSHandshakeError):
        return CLIError(f"{where}: TLS handshake failed ({e})", EXIT_CONNECT)
    if isinstance(e, HandshakeFailed):
        return CLIError(f"{where}: {e}", EXIT_CONNECT)
    if isinstance(e, ConnectionRefusedError) or isinstance(e.__cause__, ConnectionRefusedError):
        return CLIError(f"{where}: connection refused (is the router running?)", EXIT_CONNECT)
    if isinstance(e, TimeoutError):
        return CLIError(f"{where}: timed out", EXIT_CONNECT)
    if isinstance(e, OSError):
        return CLIError(f"{where}: cannot connect: {e.strerror or e}", EXIT_CONNECT)
    if isinstance(e, c.ResponseTimeout):
        return CLIError(f"{where}: the router did not answer in time", EXIT_CONNECT)
    if isinstance(e, c.ConnectionLost):
        return CLIError(f"{where}: connection lost ({e})", EXIT_CONNECT)
    if isinstance(e, ProtocolError):
        return CLIError(f"{where}: protocol error: {e}", EXIT_ERROR)
    return CLIError(f"{where}: {e!r}", EXIT_ERROR)


def _where(server: ProtocolServer) -> str:
    return f"{server.hosts[0]}:{server.port or '5223'}"


def _session(server: ProtocolServer, timeout: float):  # type: ignore[no-untyped-def]
    from transports.client_runtime import connect_session

    return connect_session(server, timeout=timeout)


def _parse_server(text: str) -> tuple[ProtocolServer, bytes | None]:
    try:
        swa = parse_server_with_auth(text)
    except ParseError as e:
        expected = "expected smp://<key hash>[:password]@host[:port]"
        raise CLIError(f"bad server address {text!r}: {e} ({expected})", EXIT_USAGE) from None
    if swa.server.scheme != "smp":
        raise CLIError(f"bad server address {text!r}: not an smp:// address", EXIT_USAGE)
    return swa.server, swa.basic_auth


def _parse_uri(text: str) -> SMPQueueUri:
    try:
        return SMPQueueUri.from_str(text.strip())
    except (ParseError, ProtocolError) as e:
        raise CLIError(f"bad queue URI: {e}", EXIT_USAGE) from None


# ---------------------------------------------------------------- commands


async def cmd_create(args: argparse.Namespace, state: State) -> int:
    server, basic_auth = _parse_server(args.server)
    name = args.name or state.next_name()
    if any(q.get("name") == name for q in state.queues):
        raise CLIError(f"a queue named {name!r} already exists", EXIT_USAGE)
    try:
        async with _session(server, args.connect_timeout) as s:
            q = await s.create_queue(subscribe=False, sender_can_secure=True, basic_auth=basic_auth)
    except Exception as e:
        raise _cli_error(e, _where(server)) from None
    uri = q.queue_uri().to_str()
    state.queues.append(State.queue_record(name, q, uri))
    state.save()
    print(f"created queue {name!r} on {_where(server)}; give this queue URI to the sender:", file=sys.stderr)
    print(uri, flush=True)
    return EXIT_OK


def _read_message(arg: str | None) -> bytes:
    if arg is None or arg == "-":
        data = sys.stdin.buffer.read()
        return data[:-1] if data.endswith(b"\n") else data
    return os.fsencode(arg)


async def cmd_send(args: argparse.Namespace, state: State) -> int:
    uri = _parse_uri(args.queue_uri)
    body = _read_message(args.message)
    key = State.sender_key(uri)
    rec = state.senders.get(key)
    if rec is None:
        try:
            sq = c.SenderQueue.from_uri(uri, os.urandom)
        except ProtocolError as e:
            raise CLIError(f"bad queue URI: {e}", EXIT_USAGE) from None
        state.senders[key] = State.sender_record(args.queue_uri.strip(), sq)
        state.save()  # the keys exist on disk before the router ever sees them
    else:
        sq = State.sender_queue(rec, uri)
    if len(body) > sq.max_body_length:
        raise CLIError(f"message too long: {len(body)} bytes, at most {sq.max_body_length}", EXIT_USAGE)
    server = uri.address.server
    try:
        async with _session(server, args.connect_timeout) as s:
            if sq.sender_can_secure and not sq.secured:
                await s.secure_sender(sq)
                state.senders[key] = State.sender_record(args.queue_uri.strip(), sq)
                state.save()
            await s.send_message(sq, body)
    except Exception as e:
        raise _cli_error(e, _where(server)) from None
    finally:
        state.senders[key] = State.sender_record(args.queue_uri.strip(), sq)
        state.save()
    return EXIT_OK


class _Receiver:
    """Prints and acknowledges the messages of one router's queues."""

    def __init__(self, state: State, records: list[dict[str, Any]]) -> None:
        self.state = state
        self.records = {State.recipient_queue(r).rcv_id: r for r in records}
        self.queues = {State.recipient_queue(r).rcv_id: State.recipient_queue(r) for r in records}
        self.count = 0

    async def handle(self, s: Any, q: c.RecipientQueue, msg: c.ReceivedMessage) -> None:
        rec = self.records[q.rcv_id]
        name = rec.get("name")
        if msg.error is not None:
            print(f"smp: queue {name}: skipping a message that cannot be decrypted ({msg.error})", file=sys.stderr)
        elif msg.quota:
            print(f"smp: queue {name}: the queue was full; the sender got QUOTA errors", file=sys.stderr)
        else:
            if q.sender_e2e_key is not None and rec.get("sender_e2e_key") != _b64(q.sender_e2e_key.spki()):
                rec["sender_e2e_key"] = _b64(q.sender_e2e_key.spki())
                self.state.save()
            if isinstance(msg.priv_header, m.PHConfirmation) and not rec.get("secured"):
                try:
                    await s.secure(q, msg.priv_header.sender_key)
                    rec["secured"] = True
                    self.state.save()
                except c.SMPErrorResponse as e:
                    print(f"smp: queue {name}: could not secure the queue (KEY): {e}", file=sys.stderr)
            out = sys.stdout.buffer
            out.write(msg.body + b"\n")
            out.flush()
            self.count += 1
        await s.ack(q, msg.msg_id)


async def _receive_server(
    args: argparse.Namespace, state: State, server_text: str, records: list[dict[str, Any]]
) -> None:
    server = ProtocolServer.from_str(server_text)
    rcv = _Receiver(state, records)
    follow = args.follow or args.timeout is not None
    try:
        async with _session(server, args.connect_timeout) as s:
            for q in rcv.queues.values():
                s.machine.add_queue(q)
            if not follow:
                for q in rcv.queues.values():
                    while True:
                        msg = await s.get(q)
                        if msg is None:
                            break
                        await rcv.handle(s, q, msg)
                return
            active = set(rcv.queues)
            for q in rcv.queues.values():
                await s.subscribe(q)
            idle = math.inf if args.timeout is None else args.timeout
            while active:
                with anyio.move_on_after(idle) as scope:
                    push = await s.next_push()
                if scope.cancelled_caught:
                    return
                q = rcv.queues.get(push.entity_id)
                if q is None:
                    continue
                if push.message is not None:
                    await rcv.handle(s, q, push.message)
                elif isinstance(push.response, (p.End, p.Deld)):
                    deleted = isinstance(push.response, p.Deld)
                    what = "was deleted" if deleted else "is now received by another connection"
                    print(f"smp: queue {rcv.records[q.rcv_id].get('name')} {what}", file=sys.stderr)
                    active.discard(q.rcv_id)
    except Exception as e:
        raise _cli_error(e, _where(server)) from None


async def cmd_receive(args: argparse.Namespace, state: State) -> int:
    if args.timeout is not None and args.timeout < 0:
        raise CLIError("--timeout must not be negative", EXIT_USAGE)
    records = [state.find(args.queue)] if args.queue else list(state.queues)
    if not records:
        raise CLIError(f"no queues in {state.path}: create one with 'smp create SERVER_ADDRESS'", EXIT_USAGE)
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        State.recipient_queue(r)  # validate before connecting
        by_server.setdefault(str(r.get("server")), []).append(r)
    errors: list[CLIError] = []

    async def run(server_text: str, recs: list[dict[str, Any]]) -> None:
        try:
            await _receive_server(args, state, server_text, recs)
        except CLIError as e:
            errors.append(e)

    async with anyio.create_task_group() as tg:
        for server_text, recs in by_server.items():
            tg.start_soon(run, server_text, recs)
    if errors:
        for e in errors[1:]:
            print(f"smp: {e}", file=sys.stderr)
        raise errors[0]
    return EXIT_OK


async def cmd_delete(args: argparse.Namespace, state: State) -> int:
    rec = state.find(args.queue)
    q = State.recipient_queue(rec)
    assert q.server is not None
    try:
        async with _session(q.server, args.connect_timeout) as s:
            s.machine.add_queue(q)
            await s.delete(q)
    except Exception as e:
        err = _cli_error(e, _where(q.server))
        if not (args.force and err.code == EXIT_AUTH):
            if err.code == EXIT_AUTH:
                err = CLIError(f"{err} — use --force to forget the queue anyway", EXIT_AUTH)
            raise err from None
    state.queues.remove(rec)
    state.save()
    print(f"deleted queue {rec.get('name')!r}", file=sys.stderr)
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, state: State) -> int:
    for q in state.queues:
        print(f"{q.get('name')}\t{q.get('uri')}")
    return EXIT_OK


# ---------------------------------------------------------------- argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smp",
        description="Queue-level SimpleX Messaging Protocol client: create queues, send and receive messages.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 connection, 4 AUTH, 5 QUOTA, 6 other router error.",
    )
    parser.add_argument(
        "--state", metavar="FILE", default=None,
        help="JSON file with keys and queues (default: $SMP_STATE or ~/.smp-client.json)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout", type=float, default=15.0, metavar="S", help="connection timeout (default 15 s)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sp = sub.add_parser(
        "create",
        help="create a queue and print its SMP queue URI",
        description="Create a queue on a router and print its SMP queue URI for the sender.",
    )
    sp.add_argument("server", metavar="SERVER_ADDRESS", help="smp://<key hash>[:password]@host[:port]")
    sp.add_argument("--name", metavar="N", help="a name for the queue (default q1, q2, …)")
    sp.set_defaults(func=cmd_create)

    sp = sub.add_parser(
        "send",
        help="send a message to a queue URI",
        description="Send one message to an SMP queue URI (secures the queue with SKEY on first use).",
    )
    sp.add_argument("queue_uri", metavar="QUEUE_URI")
    sp.add_argument("message", metavar="MESSAGE", nargs="?", help="the message text; '-' or none reads standard input")
    sp.set_defaults(func=cmd_send)

    sp = sub.add_parser(
        "receive",
        help="print and acknowledge messages",
        description="Print each message on its own line and acknowledge it.",
    )
    sp.add_argument("queue", metavar="N", nargs="?", help="queue name or number (default: all queues)")
    sp.add_argument("--follow", "-f", action="store_true", help="keep waiting for new messages")
    sp.add_argument("--timeout", type=float, metavar="S", help="wait for messages, exit after S seconds without one")
    sp.set_defaults(func=cmd_receive)

    sp = sub.add_parser("delete", help="delete a queue", description="Delete a queue on its router and forget it.")
    sp.add_argument("queue", metavar="N", help="queue name or number")
    sp.add_argument("--force", action="store_true", help="forget the queue even if the router says AUTH")
    sp.set_defaults(func=cmd_delete)

    sp = sub.add_parser("list", help="list the queues in the state file", description="List queue names and URIs.")
    sp.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state_path = args.state or default_state_path()
    try:
        state = State.load(state_path)
        return anyio.run(args.func, args, state)
    except CLIError as e:
        print(f"smp: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
