"""``smp-server``: initialise, inspect and run an SMP router (smp.md §2.3, §6.10, §6.11).

Commands (``--help`` on each)::

    smp-server init    [--dir D] [--host H] [--port P] [--sign-algorithm ED25519|ED448]
                       [--password P | --no-password] [--disable-store-log]
    smp-server start   [--dir D] [--log-level LEVEL]
    smp-server cert    [--dir D]        # new online certificate, same identity (address unchanged)
    smp-server address [--dir D]        # print smp://<key hash>[:<password>]@<host>:<port>

The directory (default ``./smp-server`` or ``$SMP_SERVER_DIR``) holds ``smp-server.ini``,
``ca.crt``, ``ca.key`` (offline identity; keep it offline after ``init``/``cert``),
``server.crt``, ``server.key`` (online TLS certificate), ``fingerprint`` (b64url key hash) and,
with the store log enabled, ``smp-server-store.log`` and ``smp-server-messages.journal``.

INI options (reference names where the reference has one, smp.md §6.11):

* ``[STORE_LOG]`` ``enable`` (on/off), ``path`` (directory of the store files, default the
  server directory), ``restore_messages`` (on/off), ``expire_messages_days`` (0 = never),
  ``expire_messages_on_start``, ``expire_messages_on_send``, ``expire_check_interval`` (seconds)
* ``[AUTH]`` ``new_queues`` (on/off), ``create_password``
* ``[TRANSPORT]`` ``host`` (printed in the address), ``port`` (comma list; default 5223),
  ``listen`` (bind address, default all interfaces)
* ``[SERVER]`` ``msg_queue_quota`` (default 128), ``pending_end_interval`` (seconds, default 15)
* ``[INACTIVE_CLIENTS]`` ``disconnect`` (on/off; off when absent, ``init`` writes on), ``ttl`` and
  ``check_interval`` (whole seconds, both required when on; ``init`` writes 21600 and 3600):
  close connections without subscriptions idle for ``ttl`` (smp.md §3.7)

Logs never contain client addresses or queue ids.
"""

from __future__ import annotations

import argparse
import configparser
import datetime as _dt
import os
import re
import secrets
import sys
from typing import Sequence

import attrs

from sansio_smp.crypto import KeyAlgorithm
from sansio_smp.encoding import b64url_encode
from sansio_smp.expiration import DEFAULT_INACTIVE_CLIENT_CHECK, DEFAULT_INACTIVE_CLIENT_TTL, InactiveClients
from sansio_smp.x509 import (
    RouterIdentity,
    der_to_pem,
    generate_online_credential,
    generate_router_identity,
    load_private_key_pem,
    pem_to_der_list,
    private_key_pem,
)

DEFAULT_PORT = 5223
DEFAULT_DIR = "smp-server"
INI_NAME = "smp-server.ini"
DEFAULT_QUOTA = 128
DEFAULT_TTL_DAYS = 21
DEFAULT_EXPIRE_CHECK = 7200
DEFAULT_PENDING_END = 15.0
PASSWORD_RE = re.compile(r"^[!-~]+$")  # printable ASCII, no whitespace


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def default_dir() -> str:
    return os.environ.get("SMP_SERVER_DIR") or DEFAULT_DIR


def _check_password(pw: str) -> str:
    if not PASSWORD_RE.match(pw) or any(c in pw for c in "@:/"):
        raise CLIError("the password must be printable ASCII without whitespace, '@', ':' and '/'")
    return pw


# ---------------------------------------------------------------- settings


@attrs.frozen
class ServerSettings:
    """Everything ``start`` needs, read from ``smp-server.ini``."""

    directory: str
    host: str = "127.0.0.1"
    ports: tuple[int, ...] = (DEFAULT_PORT,)
    listen: str | None = None
    store_log: bool = True
    store_path: str = ""
    restore_messages: bool = True
    message_ttl_days: int | None = DEFAULT_TTL_DAYS
    message_ttl_seconds: int | None = None  # overrides the days (tests, short-lived routers)
    expire_on_start: bool = True
    expire_on_send: bool = False
    expire_check_interval: float = DEFAULT_EXPIRE_CHECK
    new_queues: bool = True
    create_password: str | None = None
    msg_queue_quota: int = DEFAULT_QUOTA
    pending_end_interval: float = DEFAULT_PENDING_END
    inactive_clients: InactiveClients | None = None  # [INACTIVE_CLIENTS] disconnect = off

    @property
    def message_ttl(self) -> int | None:
        if self.message_ttl_seconds:
            return self.message_ttl_seconds
        return None if not self.message_ttl_days else self.message_ttl_days * 86400


def _on_off(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise CLIError(f"{name}: expected on or off, got {value!r}")


def inactive_seconds(value: str | None, key: str) -> int:
    """``readStrictIni``: with ``disconnect = on`` the key is required (a whole number)."""
    name = f"[INACTIVE_CLIENTS] {key}"
    if value is None:
        raise CLIError(f"{name} is required when [INACTIVE_CLIENTS] disconnect = on")
    try:
        n = int(value)
    except ValueError as e:
        raise CLIError(f"{name}: not a whole number of seconds: {value!r}") from e
    if n <= 0:
        raise CLIError(f"{name}: must be positive")
    return n


def load_settings(directory: str) -> ServerSettings:
    path = os.path.join(directory, INI_NAME)
    ini = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    if not ini.read(path):
        raise CLIError(f"{path} not found: run `smp-server init --dir {directory}` first")

    def get(section: str, key: str) -> str | None:
        if ini.has_option(section, key):
            v = ini.get(section, key).strip()
            return v if v else None
        return None

    def flag(section: str, key: str, default: bool) -> bool:
        v = get(section, key)
        return default if v is None else _on_off(v, f"[{section}] {key}")

    def number(section: str, key: str, default, conv=int):  # type: ignore[no-untyped-def]
        v = get(section, key)
        if v is None:
            return default
        try:
            return conv(v)
        except ValueError as e:
            raise CLIError(f"[{section}] {key}: not a number: {v!r}") from e

    ports_text = get("TRANSPORT", "port") or str(DEFAULT_PORT)
    try:
        ports = tuple(int(p) for p in ports_text.split(",") if p.strip())
    except ValueError as e:
        raise CLIError(f"[TRANSPORT] port: bad port list {ports_text!r}") from e
    if not ports or not all(0 <= p <= 65535 for p in ports):
        raise CLIError(f"[TRANSPORT] port: bad port list {ports_text!r}")
    password = get("AUTH", "create_password")
    if password is not None:
        _check_password(password)
    quota = number("SERVER", "msg_queue_quota", DEFAULT_QUOTA)
    if quota < 1:
        raise CLIError("[SERVER] msg_queue_quota must be at least 1")
    ttl_days = number("STORE_LOG", "expire_messages_days", DEFAULT_TTL_DAYS)
    store_log = flag("STORE_LOG", "enable", True)
    inactive = None
    if flag("INACTIVE_CLIENTS", "disconnect", False):  # settingIsOn: absent = off
        inactive = InactiveClients(
            inactive_seconds(get("INACTIVE_CLIENTS", "ttl"), "ttl"),
            inactive_seconds(get("INACTIVE_CLIENTS", "check_interval"), "check_interval"),
        )
    return ServerSettings(
        directory=directory,
        host=get("TRANSPORT", "host") or "127.0.0.1",
        ports=ports,
        listen=get("TRANSPORT", "listen"),
        store_log=store_log,
        store_path=os.path.join(directory, get("STORE_LOG", "path") or ""),
        restore_messages=flag("STORE_LOG", "restore_messages", store_log),
        message_ttl_days=ttl_days if ttl_days and ttl_days > 0 else None,
        message_ttl_seconds=number("STORE_LOG", "expire_messages_seconds", None) or None,
        expire_on_start=flag("STORE_LOG", "expire_messages_on_start", True),
        expire_on_send=flag("STORE_LOG", "expire_messages_on_send", False),
        expire_check_interval=number("STORE_LOG", "expire_check_interval", DEFAULT_EXPIRE_CHECK, float),
        new_queues=flag("AUTH", "new_queues", True),
        create_password=password,
        msg_queue_quota=quota,
        pending_end_interval=number("SERVER", "pending_end_interval", DEFAULT_PENDING_END, float),
        inactive_clients=inactive,
    )


def ini_content(host: str, port: int, password: str | None, store_log: bool) -> str:
    pw_line = f"create_password = {password}" if password else "# create_password = password to create new queues"
    return f"""\
# smp-server configuration (sansio-smp). Option names follow the reference smp-server.

[STORE_LOG]
# Append-only log of queue records, compacted on start, plus a message journal.
# Every queue and every message whose SEND was answered OK survives a restart or a crash.
enable = {"on" if store_log else "off"}
# Directory of the store files, relative to this directory (empty = this directory).
path =
restore_messages = {"on" if store_log else "off"}

# Message expiration, days (0 = never), and when it is checked.
expire_messages_days = {DEFAULT_TTL_DAYS}
expire_messages_on_start = on
expire_messages_on_send = off
expire_check_interval = {DEFAULT_EXPIRE_CHECK}

[AUTH]
# Set new_queues to off to prohibit creating new queues.
new_queues = on

# Basic auth to create new queues; it is part of the server address:
# smp://fingerprint:password@host
{pw_line}

[TRANSPORT]
# host is only used to print the server address; listen is the bind address (default: all).
host = {host}
port = {port}
# listen = 0.0.0.0

[SERVER]
# Messages per queue before QUOTA (the reference default is 128).
msg_queue_quota = {DEFAULT_QUOTA}
# Seconds between flushes of END/DELD events to replaced subscribers.
pending_end_interval = {int(DEFAULT_PENDING_END)}

[INACTIVE_CLIENTS]
# TTL and interval to check inactive clients
disconnect = on
ttl = {DEFAULT_INACTIVE_CLIENT_TTL}
check_interval = {DEFAULT_INACTIVE_CLIENT_CHECK}
"""


# ---------------------------------------------------------------- identity files


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via ``path.tmp``, fsync'd, then renamed (server ``init`` files)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_identity_files(directory: str, identity: RouterIdentity) -> None:
    """``createServerX509``'s files, as ``smp-server init`` and ``xftp-server init`` both write
    them: ``ca.crt``, ``ca.key`` (0600), ``server.crt``, ``server.key`` (0600), ``fingerprint``."""
    write_file(os.path.join(directory, "ca.crt"), identity.ca_cert_pem())
    write_file(os.path.join(directory, "ca.key"), identity.ca_key_pem(), 0o600)
    write_file(os.path.join(directory, "server.crt"), identity.server_cert_pem())
    write_file(os.path.join(directory, "server.key"), identity.server_key_pem(), 0o600)
    write_file(os.path.join(directory, "fingerprint"), (identity.fingerprint + "\n").encode())


def load_identity(directory: str) -> RouterIdentity:
    def read(name: str) -> bytes:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise CLIError(f"{os.path.join(directory, name)} not found: run `smp-server init` first") from e

    ca_certs = pem_to_der_list(read("ca.crt"))
    server_certs = pem_to_der_list(read("server.crt"))
    if not ca_certs or not server_certs:
        raise CLIError("ca.crt or server.crt holds no certificate")
    server_key = load_private_key_pem(read("server.key"))
    ca_key_path = os.path.join(directory, "ca.key")
    ca_key = load_private_key_pem(read("ca.key")) if os.path.exists(ca_key_path) else server_key
    return RouterIdentity(ca_certs[0], ca_key, server_certs[0], server_key)


def server_address(identity_fingerprint: str, host: str, port: int, password: str | None) -> str:
    """``smp://<key hash>[:<password>]@<host>:<port>`` (smp.md §2.3)."""
    auth = f":{password}" if password else ""
    return f"smp://{identity_fingerprint}{auth}@{host}:{port}"


def _now() -> _dt.datetime:
    """Certificate start time: now minus an hour, so clients whose clock is a little behind do
    not see a certificate "in the future"."""
    return _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=1)


# ---------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    directory = args.dir
    ini_path = os.path.join(directory, INI_NAME)
    if os.path.exists(ini_path) or os.path.exists(os.path.join(directory, "ca.key")):
        raise CLIError(f"{directory} is already initialised (remove it to start over)")
    if not 0 < args.port <= 65535:
        raise CLIError("--port must be 1..65535")
    alg = KeyAlgorithm.ED448 if args.sign_algorithm.upper() == "ED448" else KeyAlgorithm.ED25519
    if args.no_password:
        password = None
    elif args.password is not None:
        password = _check_password(args.password)
    else:
        password = b64url_encode(secrets.token_bytes(32))
    os.makedirs(directory, exist_ok=True)
    identity = generate_router_identity(args.host, secrets.token_bytes, _now(), alg)
    write_identity_files(directory, identity)
    write_file(ini_path, ini_content(args.host, args.port, password, not args.disable_store_log).encode())
    print(f"Server initialized in {os.path.abspath(directory)}")
    print(f"Fingerprint: {identity.fingerprint}")
    print("Keep ca.key offline: it is only needed to issue a new online certificate (smp-server cert).")
    print(server_address(identity.fingerprint, args.host, args.port, password))
    return 0


def cmd_address(args: argparse.Namespace) -> int:
    settings = load_settings(args.dir)
    identity = load_identity(args.dir)
    print(server_address(identity.fingerprint, settings.host, settings.ports[0], settings.create_password))
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    settings = load_settings(args.dir)
    ca_key_path = os.path.join(args.dir, "ca.key")
    if not os.path.exists(ca_key_path):
        raise CLIError(f"{ca_key_path} not found: the offline CA key is needed to issue a new certificate")
    identity = load_identity(args.dir)
    online = generate_online_credential(identity.ca_cert_der, identity.ca_key, settings.host, secrets.token_bytes, _now())
    write_file(os.path.join(args.dir, "server.key"), private_key_pem(online.key), 0o600)
    write_file(os.path.join(args.dir, "server.crt"), der_to_pem(online.cert_der))
    print("Generated a new online certificate; the identity (fingerprint) is unchanged.")
    print(f"Fingerprint: {identity.fingerprint}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from transports.router_runtime import run_server  # program module: I/O lives there

    settings = load_settings(args.dir)
    identity = load_identity(args.dir)
    return run_server(settings, identity, log_level=args.log_level)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smp-server", description="SMP router (sansio-smp).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dir", default=default_dir(), help="server directory (default: $SMP_SERVER_DIR or ./smp-server)")

    sp = sub.add_parser("init", help="create the configuration, the identity and the certificates")
    add_dir(sp)
    sp.add_argument("--host", default="127.0.0.1", help="host name or IP address in the address and certificate (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    sp.add_argument("--sign-algorithm", "-a", choices=["ED25519", "ED448", "ed25519", "ed448"], default="ED25519",
                    help="certificate signature algorithm (default ED25519)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--password", help="password to create new queues (default: random)")
    g.add_argument("--no-password", action="store_true", help="allow creating new queues without a password")
    sp.add_argument("--disable-store-log", action="store_true", help="do not persist queues and messages")
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("start", help="run the router")
    add_dir(sp)
    sp.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"], help="log level (default info)")
    sp.set_defaults(func=cmd_start)

    sp = sub.add_parser("cert", help="issue a new online certificate with the same identity")
    add_dir(sp)
    sp.set_defaults(func=cmd_cert)

    sp = sub.add_parser("address", help="print the server address")
    add_dir(sp)
    sp.set_defaults(func=cmd_address)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"smp-server: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
