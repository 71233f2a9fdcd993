"""XFTP throughput and memory benchmark (issue 4, item 7).

Runs one XFTP server on loopback (TLS 1.3 + HTTP/2, the reference fixtures' Ed448 identity) and
measures, in the same run:

* the **floors**: a raw TLS transfer of the same number of bytes over loopback with the same TLS
  settings (anyio ``TLSStream`` at both ends, one process, as the transfers below) plus the
  per-byte crypto each direction needs, each with the fastest API (in place, 256 KiB pieces):

  - upload: the file's streamed XSalsa20-Poly1305, its SHA-512, the chunk SHA-256 taken by the
    sender and the one the server checks;
  - download: the server's FGET encryption, the recipient's FGET decryption, the chunk SHA-256
    check, the file SHA-512 and the file decryption (three secretbox passes);

  ``floor = N / (t_tls + t_crypto)``. The data is fresh (slices of a buffer larger than the CPU
  caches), as a transfer's data is, not one cache-resident piece sent again and again;
* **upload** MB/s: ``xftp send`` of an N-byte file (encryption, FNEW, FPUT);
* **download** MB/s: ``xftp recv`` (FGET with transport decryption, digest checks, decryption);
* **peak RSS** of a separate process sending a large file (default 1 GiB), next to one sending
  a small file, to show that memory does not grow with the file size.

Earlier versions used one floor for both directions (TLS + one secretbox pass + SHA-256 +
SHA-512 over one cached 256 KiB piece); it is still printed, for comparison. It left out work
the protocol requires: two of the download's three secretbox passes and the server's SHA-256.

    python bench/bench_xftp.py [--size-mb 100] [--rss-size-mb 1024] [--no-rss]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import anyio.streams.tls as atls  # noqa: E402

from sansio_smp import x509  # noqa: E402
from sansio_smp.crypto import SecretBoxStream  # noqa: E402
from transports.tls import client_ssl_context  # noqa: E402
from xftp import handshake as hs  # noqa: E402
from transports import xftp_runtime as rt  # noqa: E402
from xftp.links import XFTPServer, XFTPServerWithAuth  # noqa: E402
from xftp.server import ServerConfig  # noqa: E402

FIX = ROOT / "tests" / "data" / "xftp" / "fixtures"
MB = 1 << 20


def _identity():  # type: ignore[no-untyped-def]
    server_pem, ca_pem = (FIX / "server.crt").read_bytes(), (FIX / "ca.crt").read_bytes()
    key_pem = (FIX / "server.key").read_bytes()
    chain = [x509.pem_to_der_list(server_pem)[0], x509.pem_to_der_list(ca_pem)[0]]
    return hs.ServerIdentity(chain, x509.load_private_key_pem(key_pem)), server_pem + ca_pem, key_pem


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        block = os.urandom(MB)
        i = 0
        while left:
            n = min(left, MB)
            # cheap distinct content without calling urandom for every MiB
            f.write(hashlib.sha256(i.to_bytes(8, "big")).digest()[:8] + block[8:n] if n > 8 else block[:n])
            left -= n
            i += 1


FRESH_POOL = 64 * MB  # larger than the last-level cache: every piece comes from memory
PIECE = 1 << 18


class _FreshData:
    """Pieces of fresh (not cache-resident) random data, cycling through a large pool."""

    def __init__(self) -> None:
        self.pool = bytearray(FRESH_POOL)
        self.view = memoryview(self.pool)
        for off in range(0, FRESH_POOL, MB):
            self.view[off : off + MB] = os.urandom(MB)

    def pieces(self, size: int, piece: int = PIECE):  # type: ignore[no-untyped-def]
        off, left = 0, size
        while left > 0:
            n = min(piece, left)
            if off + n > FRESH_POOL:
                off = 0
            yield self.view[off : off + n]
            off += n
            left -= n


def crypto_floor(size: int, fresh: _FreshData, direction: str) -> float:
    """Seconds for the per-byte crypto one direction needs over ``size`` bytes (module docstring),
    fused per piece as the implementation does, in place (no allocation)."""
    h512 = hashlib.sha512()
    h256s = [hashlib.sha256(), hashlib.sha256()]
    boxes = [SecretBoxStream(bytes(32), bytes(24)) for _ in range(3)]
    t = time.perf_counter()
    if direction == "upload":
        box = boxes[0]
        for piece in fresh.pieces(size):
            box.encrypt_in_place(piece)  # file encryption
            h512.update(piece)  # file digest
            h256s[0].update(piece)  # chunk digest (sender)
            h256s[1].update(piece)  # chunk digest check (server)
    else:
        fget_enc, fget_dec, file_dec = boxes
        h256 = h256s[0]
        for piece in fresh.pieces(size):
            fget_enc.encrypt_in_place(piece)  # server: FGET transport encryption
            fget_dec.decrypt_in_place(piece)  # recipient: FGET transport decryption
            h256.update(piece)  # chunk digest check
            h512.update(piece)  # file digest
            file_dec.decrypt_in_place(piece)  # file decryption
    for box in boxes:
        box.tag()
    return time.perf_counter() - t


def crypto_floor_single(size: int) -> float:
    """The earlier single floor's crypto: one secretbox + SHA-256 + SHA-512 over one cached
    256 KiB piece (kept for comparison with earlier figures)."""
    piece = os.urandom(PIECE)
    s = SecretBoxStream(bytes(32), bytes(24))
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    t = time.perf_counter()
    left = size
    while left > 0:
        out = s.encrypt(piece)
        h256.update(out)
        h512.update(out)
        left -= len(piece)
    s.tag()
    return time.perf_counter() - t


async def tls_floor(chain_pem: bytes, key_pem: bytes, size: int, fresh: _FreshData | None = None) -> float:
    """Seconds to move ``size`` bytes over loopback TLS with the router's TLS settings (fresh
    data from ``fresh``, else one cached 256 KiB piece again and again)."""
    ctx = rt.xftp_server_ssl_context(chain_pem, key_pem)
    received = anyio.Event()

    async def serve(stream) -> None:  # type: ignore[no-untyped-def]
        tls = await atls.TLSStream.wrap(stream, server_side=True, ssl_context=ctx, standard_compatible=False)
        got = 0
        while got < size:
            got += len(await tls.receive(1 << 18))
        received.set()
        await tls.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        tcp = await anyio.connect_tcp("127.0.0.1", port)
        tls = await atls.TLSStream.wrap(
            tcp, server_side=False, ssl_context=client_ssl_context(["xftp/1"]), standard_compatible=False
        )
        cached = os.urandom(PIECE)
        source = fresh.pieces(size) if fresh is not None else (cached for _ in range(-(-size // PIECE)))
        t = time.perf_counter()
        for piece in source:
            await tls.send(piece)
        await received.wait()
        dt = time.perf_counter() - t
        await tls.aclose()
        tg.cancel_scope.cancel()
    return dt


async def run_server(tmp: Path, task_status=anyio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
    ident, chain_pem, key_pem = _identity()
    files = tmp / "files"
    files.mkdir(exist_ok=True)
    machine, _ = rt.restore_store(ServerConfig(str(files)), str(tmp / rt.STORE_LOG_NAME))
    runtime = rt.XFTPServerRuntime(
        machine,
        ident,
        rt.xftp_server_ssl_context(chain_pem, key_pem),
        store_log=rt.StoreLogWriter(str(tmp / rt.STORE_LOG_NAME)),
    )
    await runtime.serve("127.0.0.1", 0, task_status=task_status)


async def throughput(size: int) -> dict:
    ident, chain_pem, key_pem = _identity()
    with tempfile.TemporaryDirectory(prefix="bench-xftp-") as d:
        tmp = Path(d)
        src = tmp / "src.bin"
        write_random_file(src, size)
        fresh = _FreshData()
        t_tls = await tls_floor(chain_pem, key_pem, size, fresh)
        t_up_crypto = crypto_floor(size, fresh, "upload")
        t_down_crypto = crypto_floor(size, fresh, "download")
        t_tls_cached = await tls_floor(chain_pem, key_pem, size)
        t_single_crypto = crypto_floor_single(size)
        del fresh
        async with anyio.create_task_group() as tg:
            port = await tg.start(run_server, tmp)
            addr = XFTPServer.make("localhost", port, ident.key_hash)
            t = time.perf_counter()
            sent = await rt.send_file(str(src), [XFTPServerWithAuth(addr)], out_dir=None, tmp_dir=str(tmp))
            t_up = time.perf_counter() - t
            t = time.perf_counter()
            got = await rt.receive_file(sent.recipient_descriptions[0], str(tmp / "out"), tmp_dir=str(tmp))
            t_down = time.perf_counter() - t
            tg.cancel_scope.cancel()
        assert os.path.getsize(got) == size

    def rate(seconds: float) -> float:
        return size / seconds / MB

    up, down = rate(t_up), rate(t_down)
    floor_up, floor_down = rate(t_tls + t_up_crypto), rate(t_tls + t_down_crypto)
    single = rate(t_tls_cached + t_single_crypto)
    return {
        "size_mb": size / MB,
        "tls_mb_s": rate(t_tls),
        "upload_crypto_mb_s": rate(t_up_crypto),
        "download_crypto_mb_s": rate(t_down_crypto),
        "upload_floor_mb_s": floor_up,
        "download_floor_mb_s": floor_down,
        "upload_mb_s": up,
        "download_mb_s": down,
        "upload_vs_floor": up / floor_up,
        "download_vs_floor": down / floor_down,
        "single_floor_mb_s": single,
        "upload_vs_single_floor": up / single,
        "download_vs_single_floor": down / single,
    }


_RSS_CHILD = r"""
import sys, anyio, resource
sys.path.insert(0, {root!r})
from pathlib import Path
from bench.bench_xftp import run_server, write_random_file, _identity
from transports import xftp_runtime as rt
from xftp.links import XFTPServer, XFTPServerWithAuth

async def main(size, tmp, server_port):
    ident = _identity()[0]
    src = Path(tmp) / "src.bin"
    write_random_file(src, size)
    addr = XFTPServer.make("localhost", server_port, ident.key_hash)
    await rt.send_file(str(src), [XFTPServerWithAuth(addr)], out_dir=None, tmp_dir=tmp)
    # VmHWM: this address space's peak. ru_maxrss survives execve on Linux, so it would report
    # the parent's peak at fork time whenever that is larger.
    try:
        with open("/proc/self/status") as f:
            print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

anyio.run(main, int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
"""


async def rss_of_send(size: int) -> int:
    """Peak RSS (KiB, VmHWM) of a client process sending ``size`` bytes to a server in this process."""
    with tempfile.TemporaryDirectory(prefix="bench-xftp-rss-") as d:
        async with anyio.create_task_group() as tg:
            port = await tg.start(run_server, Path(d))
            code = _RSS_CHILD.format(root=str(ROOT))
            out = await anyio.run_process([sys.executable, "-c", code, str(size), d, str(port)], check=True)
            tg.cancel_scope.cancel()
    return int(out.stdout.decode().strip().splitlines()[-1])


async def main(args: argparse.Namespace) -> None:
    r = await throughput(args.size_mb * MB)
    print(f"file size                          {r['size_mb']:.0f} MB")
    print(f"TLS loopback                       {r['tls_mb_s']:8.1f} MB/s")
    print(f"upload crypto (box+SHA512+2xSHA256){r['upload_crypto_mb_s']:8.1f} MB/s")
    print(f"download crypto (3xbox+SHA256+512) {r['download_crypto_mb_s']:8.1f} MB/s")
    print(f"upload floor   (TLS + its crypto)  {r['upload_floor_mb_s']:8.1f} MB/s")
    print(f"download floor (TLS + its crypto)  {r['download_floor_mb_s']:8.1f} MB/s")
    print(
        f"upload   (xftp send)               {r['upload_mb_s']:8.1f} MB/s  = {100 * r['upload_vs_floor']:.0f}% of its floor"
    )
    print(
        f"download (xftp recv)               {r['download_mb_s']:8.1f} MB/s  = {100 * r['download_vs_floor']:.0f}% of its floor"
    )
    print(
        f"(earlier single floor {r['single_floor_mb_s']:.1f} MB/s: upload {100 * r['upload_vs_single_floor']:.0f}%,"
        f" download {100 * r['download_vs_single_floor']:.0f}% of it)"
    )
    if not args.no_rss:
        small = await rss_of_send(4 * MB)
        big = await rss_of_send(args.rss_size_mb * MB)
        print(f"peak RSS sending 4 MB     {small / 1024:8.1f} MB")
        print(f"peak RSS sending {args.rss_size_mb} MB  {big / 1024:8.1f} MB")
    print(f"(this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--rss-size-mb", type=int, default=1024)
    ap.add_argument("--no-rss", action="store_true")
    anyio.run(main, ap.parse_args())
