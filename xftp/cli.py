"""``xftp`` and ``xftp-server`` command lines (xftp-ntf.md §1.14, §1.15).

Client::

    xftp send FILE [DIR] [-n RECIPIENTS] [-s SERVERS] [--retry R] [--tmp DIR]
    xftp recv DESCRIPTION|LINK [DIR] [--retry R] [--tmp DIR]
    xftp del SENDER_DESCRIPTION [--retry R]
    xftp info DESCRIPTION

``-s`` takes ``;``-separated ``xftp://<keyhash>[:<password>]@<host>[:<port>]`` addresses (or
``$XFTP_SERVERS``). ``send`` writes ``<DIR>/<name>.xftp/rcvN.xftp`` (one per recipient) and
``snd.xftp.private`` and prints the web link; progress goes to stderr.

Server::

    xftp-server init  [--dir D] [--host H] [--port P] [--quota Q] [--sign-algorithm ED448|ED25519]
                      [--disable-store-log] [--password PWD] [--web-cert F --web-key F]
    xftp-server start [--dir D] [--log-level L]

The directory (default ``./xftp-server`` or ``$XFTP_SERVER_DIR``) holds ``file-server.ini`` (the
reference's sections and keys, ``key = value`` or ``key: value``), ``ca.crt``/``ca.key``,
``server.crt``/``server.key``, ``fingerprint``, ``file-server-store.log`` and the chunk files
(``[FILES] path``, default ``<dir>/files``).
"""

from __future__ import annotations

import argparse
import configparser
import datetime as _dt
import logging
import os
import secrets
import sys
from typing import Sequence

import attrs

from sansio_smp.addresses import parse_servers_with_auth
from sansio_smp.crypto import KeyAlgorithm
from sansio_smp.errors import ParseError
from transports.server_cli import CLIError, inactive_seconds, write_file, write_identity_files
from sansio_smp.x509 import generate_router_identity, load_private_key_pem, pem_to_der_list

from . import description as d
from . import file_crypto as fc
from .server import DEFAULT_INACTIVE_CLIENT_CHECK, DEFAULT_INACTIVE_CLIENT_TTL, InactiveClients

INI_NAME = "file-server.ini"
DEFAULT_DIR = "xftp-server"
DEFAULT_PORT = 443
DEFAULT_EXPIRE_HOURS = 48


# one user-facing error type for every server program (printed without a traceback)


# ================================================================ client


class _Progress:
    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        pct = done * 100 // total if total else 100
        if pct != self._last:
            self._last = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._last >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _run(coro_fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    import anyio

    return anyio.run(lambda: coro_fn(*args, **kwargs))


def cmd_send(args: argparse.Namespace) -> int:
    from transports import xftp_runtime as rt

    servers_text = args.servers or os.environ.get("XFTP_SERVERS")
    if not servers_text:
        raise CLIError("no XFTP servers: pass -s 'xftp://<keyhash>@<host>:<port>' (or set XFTP_SERVERS)")
    try:
        servers = parse_servers_with_auth(servers_text, "xftp")
    except ParseError as e:
        raise CLIError(f"invalid server address: {e}") from e
    if not os.path.isfile(args.file):
        raise CLIError(f"{args.file}: no such file")
    out_dir = args.dir or "."
    progress = _Progress("Uploading", not args.quiet)
    sys.stderr.write("Encrypting file...\n") if not args.quiet else None
    sent = _run(
        rt.send_file,
        args.file,
        servers,
        out_dir=out_dir,
        recipients=args.recipients,
        retries=args.retry,
        tmp_dir=args.tmp,
        progress=progress,
    )
    progress.done()
    print(f"Sender file description: {sent.sender_path}")
    print("Pass file descriptions to the recipient(s):")
    for path in sent.recipient_paths:
        print(path)
    if sent.web_link:
        print(f"\nWeb link:\n{sent.web_link}")
    return 0


def cmd_recv(args: argparse.Namespace) -> int:
    from transports import xftp_runtime as rt

    fd = rt.load_description(args.description)
    out_dir = args.dir or "."
    progress = _Progress("Downloading", not args.quiet)
    path = _run(rt.receive_file, fd, out_dir, retries=args.retry, tmp_dir=args.tmp, progress=progress)
    progress.done()
    print(f"File downloaded: {path}")
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    from transports import xftp_runtime as rt

    try:
        with open(args.description, "rb") as f:
            fd = d.FileDescription.decode_valid(f.read(), party="sender")
    except OSError as e:
        raise CLIError(f"cannot read {args.description}: {e}") from e
    except ParseError as e:
        raise CLIError(f"Failed to parse file description: {e}") from e
    _run(rt.delete_file, fd, retries=args.retry)
    print("File deleted!")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    try:
        with open(args.description, "rb") as f:
            fd = d.FileDescription.decode_valid(f.read())
    except (OSError, ParseError) as e:
        raise CLIError(f"Failed to parse file description: {e}") from e
    print("Recipient file description" if fd.party == "recipient" else "Sender file description")
    print(f"File download size: {d.encode_file_size(fd.size)}")
    print("File server(s):")
    for server, group in fd.server_replicas():
        total = sum(r.chunk_size or fd.chunk_size for r in group)
        print(f"{server.encode()}: {d.encode_file_size(total)}")
    return 0


def client_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xftp", description="SimpleX XFTP client: send and receive files")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, tmp: bool = True) -> None:
        sp.add_argument("--retry", "-r", type=int, default=3, help="network retries (default 3)")
        if tmp:
            sp.add_argument("--tmp", help="directory for temporary encrypted files")
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
        sp.add_argument("--verbose", "-v", action="store_true")

    s = sub.add_parser("send", help="send a file")
    s.add_argument("file")
    s.add_argument("dir", nargs="?", help="directory for the file descriptions (default: current)")
    s.add_argument("-n", "--recipients", type=int, default=1, help="number of recipients (default 1)")
    s.add_argument("-s", "--servers", help="';'-separated XFTP server addresses")
    common(s)
    s.set_defaults(func=cmd_send)
    r = sub.add_parser("recv", help="receive a file")
    r.add_argument("description", help="recipient file description, or a https://…/#… web link")
    r.add_argument("dir", nargs="?", help="directory to save the file (default: current)")
    common(r)
    r.set_defaults(func=cmd_recv)
    x = sub.add_parser("del", help="delete a sent file from the servers")
    x.add_argument("description", help="sender file description (snd.xftp.private)")
    common(x, tmp=False)
    x.set_defaults(func=cmd_del)
    i = sub.add_parser("info", help="show a file description")
    i.add_argument("description")
    i.set_defaults(func=cmd_info)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = client_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.ERROR)
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    from transports import xftp_runtime as rt
    from .protocol import XFTPErrorResponse

    try:
        return args.func(args)
    except (CLIError, rt.XFTPClientError) as e:
        print(f"\n{e}", file=sys.stderr)
        return 1
    except XFTPErrorResponse as e:
        print(f"\nXFTP error: {e}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError, TimeoutError) as e:
        print(f"\nNetwork error: {e!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ================================================================ server


@attrs.frozen
class ServerSettings:
    directory: str
    host: str
    port: int
    store_log: bool
    expire_hours: int | None
    new_files: bool
    create_password: bytes | None
    files_path: str
    quota: int | None
    allowed_chunk_sizes: tuple[int, ...]
    web_cert: str | None
    web_key: str | None
    file_timeout: float = 300.0
    inactive_clients: InactiveClients | None = None


def _on_off(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("on", "true", "yes"):
        return True
    if v in ("off", "false", "no"):
        return False
    raise CLIError(f"{name}: expected on or off, got {value!r}")


def _size(value: str, name: str) -> int:
    try:
        return d.decode_file_size(value.strip())
    except ParseError as e:
        raise CLIError(f"{name}: bad size {value!r} (use e.g. 100gb, 512mb, 64kb)") from e


def load_settings(directory: str) -> ServerSettings:
    path = os.path.join(directory, INI_NAME)
    ini = configparser.ConfigParser(interpolation=None, delimiters=("=", ":"), comment_prefixes=("#", ";"))
    try:
        if not ini.read(path):
            raise CLIError(f"{path} not found: run `xftp-server init --dir {directory}` first")
    except configparser.Error as e:
        raise CLIError(f"{path}: {e}") from e

    def get(section: str, key: str) -> str | None:
        if ini.has_option(section, key):
            v = ini.get(section, key).strip()
            return v or None
        return None

    def flag(section: str, key: str, default: bool) -> bool:
        v = get(section, key)
        return default if v is None else _on_off(v, f"[{section}] {key}")

    port_text = get("TRANSPORT", "port") or str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError as e:
        raise CLIError(f"[TRANSPORT] port: bad port {port_text!r}") from e
    files = get("FILES", "path")
    if files is None:
        raise CLIError("[FILES] path is required")
    quota_text = get("FILES", "storage_quota")
    sizes_text = get("FILES", "allowed_chunk_sizes")
    sizes = (
        tuple(_size(s, "[FILES] allowed_chunk_sizes") for s in sizes_text.split(","))
        if sizes_text
        else fc.SERVER_CHUNK_SIZES
    )
    hours_text = get("STORE_LOG", "expire_files_hours")
    try:
        hours = DEFAULT_EXPIRE_HOURS if hours_text is None else int(hours_text)
    except ValueError as e:
        raise CLIError("[STORE_LOG] expire_files_hours: not a number") from e
    pwd = get("AUTH", "create_password")
    if pwd is not None and not all(0x21 <= ord(c) <= 0x7E and c not in "@:/" for c in pwd):
        raise CLIError("[AUTH] create_password: printable ASCII without whitespace, '@', ':' or '/'")
    web_cert, web_key = get("WEB", "cert"), get("WEB", "key")
    inactive = None
    if flag("INACTIVE_CLIENTS", "disconnect", False):
        # as readStrictIni: with disconnect = on both keys are required
        inactive = InactiveClients(
            inactive_seconds(get("INACTIVE_CLIENTS", "ttl"), "ttl"),
            inactive_seconds(get("INACTIVE_CLIENTS", "check_interval"), "check_interval"),
        )
    return ServerSettings(
        directory=directory,
        host=get("TRANSPORT", "host") or "localhost",
        port=port,
        store_log=flag("STORE_LOG", "enable", True),
        expire_hours=hours if hours > 0 else None,
        new_files=flag("AUTH", "new_files", True),
        create_password=pwd.encode() if pwd else None,
        files_path=os.path.abspath(os.path.join(directory, files)),
        quota=None if quota_text is None else _size(quota_text, "[FILES] storage_quota"),
        allowed_chunk_sizes=sizes,
        web_cert=os.path.join(directory, web_cert) if web_cert else None,
        web_key=os.path.join(directory, web_key) if web_key else None,
        inactive_clients=inactive,
    )


def ini_content(
    host: str, port: int, quota: str, store_log: bool, password: str | None, web: tuple[str, str] | None
) -> str:
    onoff = "on" if store_log else "off"
    pwd = f"create_password = {password}\n" if password else "# create_password = password to upload files\n"
    web_lines = f"cert = {web[0]}\nkey = {web[1]}\n" if web else "# cert = web.crt\n# key = web.key\n"
    return f"""[INFORMATION]
# source_code = https://github.com/simplex-chat/simplexmq

[STORE_LOG]
# The store log keeps the file records; it is compacted on start.
enable = {onoff}
# Expire files after the specified number of hours.
expire_files_hours = {DEFAULT_EXPIRE_HOURS}
log_stats = off

[AUTH]
# Set new_files option to off to prohibit uploading new files.
new_files = on
# The password is part of the server address for uploads: xftp://fingerprint:password@host
{pwd}
[TRANSPORT]
# host is only used to print the server address
host = {host}
port = {port}
log_tls_errors = off

[FILES]
path = files
storage_quota = {quota}
# allowed_chunk_sizes = 64kb,256kb,1mb,4mb

[INACTIVE_CLIENTS]
# TTL and interval to check inactive clients
disconnect = off
# ttl = {DEFAULT_INACTIVE_CLIENT_TTL}
# check_interval = {DEFAULT_INACTIVE_CLIENT_CHECK}

[WEB]
# TLS credentials for web clients (SNI connections, CORS) on the same port:
{web_lines}"""


def server_address(fingerprint: str, host: str, port: int, password: str | None = None) -> str:
    auth = f":{password}" if password else ""
    port_s = "" if port == DEFAULT_PORT else f":{port}"
    return f"xftp://{fingerprint}{auth}@{host}{port_s}"


def cmd_server_init(args: argparse.Namespace) -> int:
    directory = args.dir
    if os.path.exists(os.path.join(directory, INI_NAME)):
        raise CLIError(f"Error: server is already initialized ({os.path.join(directory, INI_NAME)} exists)")
    if not 0 < args.port <= 65535:
        raise CLIError("--port must be 1..65535")
    quota = d.encode_file_size(_size(args.quota, "--quota"))
    alg = KeyAlgorithm.ED25519 if args.sign_algorithm.upper() == "ED25519" else KeyAlgorithm.ED448
    if bool(args.web_cert) != bool(args.web_key):
        raise CLIError("--web-cert and --web-key go together")
    os.makedirs(os.path.join(directory, "files"), exist_ok=True)
    identity = generate_router_identity(args.host, secrets.token_bytes, _dt.datetime.now(_dt.timezone.utc), alg)
    write_identity_files(directory, identity)
    web = (os.path.abspath(args.web_cert), os.path.abspath(args.web_key)) if args.web_cert else None
    ini = ini_content(args.host, args.port, quota, not args.disable_store_log, args.password, web)
    write_file(os.path.join(directory, INI_NAME), ini.encode())
    print(f"Server initialized in {os.path.abspath(directory)}; configuration: {INI_NAME}")
    print("Keep ca.key offline: it is only needed to issue a new online certificate.")
    print(server_address(identity.fingerprint, args.host, args.port, args.password))
    return 0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e}") from e


def cmd_server_start(args: argparse.Namespace) -> int:
    import anyio

    from . import handshake as hs
    from transports import xftp_runtime as rt
    from .server import ServerConfig

    st = load_settings(args.dir)
    server_pem, ca_pem = _read(os.path.join(args.dir, "server.crt")), _read(os.path.join(args.dir, "ca.crt"))
    key_pem = _read(os.path.join(args.dir, "server.key"))
    try:
        chain = [pem_to_der_list(server_pem)[0], pem_to_der_list(ca_pem)[0]]
        identity = hs.ServerIdentity(chain, load_private_key_pem(key_pem))
    except (IndexError, ValueError, ParseError) as e:
        raise CLIError(f"bad server certificate or key: {e}") from e
    fp = d.b64url_encode(identity.key_hash)
    fp_path = os.path.join(args.dir, "fingerprint")
    if os.path.exists(fp_path) and _read(fp_path).decode().strip() != fp:
        raise CLIError("the fingerprint file does not match ca.crt")
    config = ServerConfig(
        files_path=st.files_path,
        allowed_chunk_sizes=st.allowed_chunk_sizes,
        quota=st.quota,
        allow_new_files=st.new_files,
        new_file_password=st.create_password,
        file_expiration=None if st.expire_hours is None else st.expire_hours * 3600,
    )
    log_path = os.path.join(args.dir, rt.STORE_LOG_NAME) if st.store_log else None
    machine, warnings = rt.restore_store(config, log_path)
    for w in warnings:
        logging.getLogger("xftp").warning("store log: %s", w)
    web_ctx = rt.web_ssl_context(st.web_cert, st.web_key) if st.web_cert and st.web_key else None
    ctx = rt.xftp_server_ssl_context(server_pem + ca_pem, key_pem, web_ctx)
    runtime = rt.XFTPServerRuntime(
        machine,
        identity,
        ctx,
        web_enabled=web_ctx is not None,
        store_log=rt.StoreLogWriter(log_path),
        file_timeout=st.file_timeout,
        inactive_clients=st.inactive_clients,
    )
    pwd = st.create_password.decode() if st.create_password else None
    print(server_address(fp, st.host, st.port, pwd), flush=True)
    print(f"Store log: {log_path}" if log_path else "Store log disabled.")
    print(f"Files: {st.files_path}, {len(machine.store.files)} restored, {machine.used_storage} bytes used")
    ic = st.inactive_clients
    print(
        f"expiring clients inactive for {ic.ttl} seconds every {ic.check_interval} seconds"
        if ic
        else "not expiring inactive clients"
    )
    print(f"Listening on port {st.port}...", flush=True)
    try:
        anyio.run(lambda: runtime.serve(None, st.port))
    except KeyboardInterrupt:
        pass
    return 0


def server_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xftp-server", description="SimpleX XFTP server")
    sub = ap.add_subparsers(dest="command", required=True)
    default_dir = os.environ.get("XFTP_SERVER_DIR", DEFAULT_DIR)
    i = sub.add_parser("init", help="create the identity, certificates and file-server.ini")
    i.add_argument("--dir", default=default_dir)
    i.add_argument("--host", default="localhost", help="host name or IP (certificate CN and address)")
    i.add_argument("--port", type=int, default=DEFAULT_PORT)
    i.add_argument("--quota", "-q", default="100gb", help="storage quota (e.g. 100gb)")
    i.add_argument("--sign-algorithm", "-a", default="ED448", choices=["ED448", "ED25519", "ed448", "ed25519"])
    i.add_argument("--disable-store-log", action="store_true")
    i.add_argument("--password", help="password required to upload new files")
    i.add_argument("--web-cert", help="web certificate chain (PEM) for browsers (SNI)")
    i.add_argument("--web-key", help="web certificate key (PEM)")
    i.set_defaults(func=cmd_server_init)
    s = sub.add_parser("start", help="run the server")
    s.add_argument("--dir", default=default_dir)
    s.add_argument("--log-level", default="WARNING")
    s.set_defaults(func=cmd_server_start)
    return ap


def server_main(argv: Sequence[str] | None = None) -> int:
    args = server_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(getattr(args, "log_level", "WARNING")).upper(), logging.WARNING))
    try:
        return args.func(args)
    except CLIError as e:
        print(str(e), file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
