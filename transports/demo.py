"""``python -m sansio_smp.demo``: a router on localhost, a queue, one message through it over TLS.

Step by step, all in one process and printed as it happens:

1. a router identity (Ed25519 offline CA + online certificate) and its store in a temporary
   directory; the router listens with TLS on 127.0.0.1 on a random free port;
2. Alice (recipient) connects — the router's certificate chain is checked against the key hash in
   the address — and creates a queue (``NEW`` → ``IDS``); she gets the SMP queue URI;
3. Bob (sender) connects, secures the queue with his key (``SKEY``) and sends a message in the
   per-queue end-to-end envelope (``SEND``);
4. Alice receives it (``MSG``), decrypts both layers and acknowledges it (``ACK``); she deletes
   the queue (``DEL``); the router stops and the directory is removed.

Exit code 0 on success. Options: ``--message TEXT``, ``--quiet``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Sequence

import anyio


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


async def run_demo(message: bytes, quiet: bool = False) -> bytes:
    """Run the whole demo; returns the message as Alice decrypted it."""
    from transports.client_runtime import connect_session
    from transports.router_runtime import RouterRuntime
    from transports.store_files import StoreFiles
    from transports.tls import create_tls_listener, server_ssl_context

    from sansio_smp import client as c
    from sansio_smp.addresses import ProtocolServer, SMPQueueUri
    from sansio_smp.router import Router, RouterConfig
    from sansio_smp.x509 import generate_router_identity

    say = lambda text: _say(quiet, text)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="smp-demo-") as directory:
        identity = generate_router_identity("127.0.0.1", os.urandom, time.time())
        for name, data in (("ca.crt", identity.ca_cert_pem()), ("server.crt", identity.server_cert_pem())):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        say(f"[router] identity: Ed25519 CA + online certificate in {directory}")
        say(f"[router] key hash (SHA-256 of the CA certificate): {identity.fingerprint}")
        store = StoreFiles(directory)
        restored = store.open(time.time(), None)
        router = Router(RouterConfig(persistence=True), os.urandom, store=restored.store, messages=restored.messages)
        runtime = RouterRuntime(router, identity, store)
        ctx = server_ssl_context(identity.chain_pem(), identity.server_key_pem())
        listener = await create_tls_listener("127.0.0.1", 0, ctx)
        address = ProtocolServer(("127.0.0.1",), str(listener.port), identity.key_hash)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run, [listener])
            say(f"[router] listening with TLS on 127.0.0.1:{listener.port}")
            say(f"[router] address: {address}")
            try:
                async with connect_session(address) as alice:
                    tls = alice.stream
                    say(
                        f"[alice]  connected: {getattr(tls, 'tls_version', 'TLS')} {getattr(tls, 'cipher', '')}, "
                        f"ALPN {tls.alpn}, router chain matches the key hash; SMP v{alice.version}, "
                        f"block encryption {'on' if alice.block_encryption else 'off'}"
                    )
                    q = await alice.create_queue(subscribe=True)
                    ids = f"recipient id {q.rcv_id.hex()[:16]}…, sender id {q.snd_id.hex()[:16]}…"
                    say(f"[alice]  NEW -> IDS: {ids}")
                    uri = q.queue_uri().to_str()
                    say(f"[alice]  queue URI for the sender: {uri}")
                    async with connect_session(address) as bob:
                        say(f"[bob]    connected: SMP v{bob.version}")
                        sq = c.SenderQueue.from_uri(SMPQueueUri.from_str(uri), os.urandom)
                        await bob.secure_sender(sq)
                        say("[bob]    SKEY -> OK: the queue now only accepts Bob's signed messages")
                        await bob.send_message(sq, message)
                        say(f"[bob]    SEND {message!r} in the e2e envelope (15992 bytes, signed) -> OK")
                    with anyio.fail_after(10):
                        msg = await anext(alice.messages())
                    say(f"[alice]  MSG {msg.msg_id.hex()[:16]}… (16122 encrypted bytes) -> decrypted: {msg.body!r}")
                    await alice.ack(q, msg.msg_id)
                    say("[alice]  ACK -> OK")
                    await alice.delete(q)
                    say("[alice]  DEL -> OK: the queue and its messages are gone")
            finally:
                runtime.stop()
        say("[router] stopped; temporary directory removed")
        if msg.body != message:
            raise RuntimeError("the received message differs from the sent one")
        return msg.body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sansio_smp.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--message", default="Hello from sansio-smp!", help="the message to send")
    parser.add_argument("--quiet", action="store_true", help="print nothing, just exit 0 on success")
    args = parser.parse_args(argv)
    try:
        anyio.run(run_demo, args.message.encode("utf-8"), args.quiet)
    except Exception as e:  # pragma: no cover - reported to the user
        print(f"demo failed: {e!r}", file=sys.stderr)
        return 1
    _say(args.quiet, "demo finished: the message went through the router over TLS")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
