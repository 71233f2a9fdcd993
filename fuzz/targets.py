"""The fuzz targets and the valid seed inputs they start from."""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Callable

from sansio_smp import protocol as p
from sansio_smp.client import SMPClient
from sansio_smp.connection import ClientConnection, RouterConnection, TransmissionReceived
from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.errors import RemoteProtocolError
from sansio_smp.handshake import ClientHello, ServerHello
from sansio_smp.router import Router, RouterConfig
from sansio_smp.transmission import (
    SMP_BLOCK_SIZE,
    TransmissionParams,
    encode_batch1,
    pad_block,
    parse_batch,
    parse_transmission,
)
from sansio_smp.x509 import RouterIdentity, generate_router_identity

NOW = 1_700_000_000.0
VERSION = 18


class InvariantViolation(AssertionError):
    """A target broke the "value or typed error" invariant."""


@lru_cache(maxsize=1)
def _identity() -> RouterIdentity:
    return generate_router_identity("localhost", random.Random(1).randbytes, NOW - 86400)


def _open(router: Router, conn_id: int, rng: random.Random) -> tuple[RouterConnection, ClientConnection]:
    """A connection past the handshake, without block encryption so inputs reach the parsers."""
    ident = _identity()
    sid = rng.randbytes(32)
    rc = RouterConnection(session_id=sid, key_hash=ident.key_hash, identity=ident, random_bytes=rng.randbytes)
    router.connect(conn_id, rc)
    cc = ClientConnection(
        key_hash=ident.key_hash, session_id=sid, random_bytes=rng.randbytes, peer_chain=ident.chain, send_key=False
    )
    cc.receive_data(rc.data_to_send())
    router.handle_events(conn_id, rc.receive_data(cc.data_to_send()), NOW)
    rc.data_to_send()
    return rc, cc


def _feed_router(router: Router, conn_id: int, rc: RouterConnection, data: bytes) -> None:
    try:
        events = rc.receive_data(data)
    except RemoteProtocolError:
        return
    router.handle_events(conn_id, events, NOW)
    router.handle_timer(NOW + 20)


def router_blocks(data: bytes) -> None:
    """Raw bytes from one client after the handshake; then another client must get PONG."""
    rng = random.Random(len(data))
    router = Router(RouterConfig(), rng.randbytes)
    rc, _ = _open(router, 1, rng)
    if len(data) % SMP_BLOCK_SIZE:  # complete the last block so every input reaches the parsers
        data += b"#" * (SMP_BLOCK_SIZE - len(data) % SMP_BLOCK_SIZE)
    try:
        _feed_router(router, 1, rc, data)
    except RemoteProtocolError:
        pass
    except Exception as e:  # noqa: BLE001 - the invariant under test
        raise InvariantViolation(f"router raised {type(e).__name__}: {e}") from e
    rc2, cc2 = _open(router, 2, rng)
    cc2.send_transmissions([cc2.authorize(b"p" * 24, b"", b"PING", None)])
    router.handle_events(2, rc2.receive_data(cc2.data_to_send()), NOW)
    got = [e for e in cc2.receive_data(rc2.data_to_send()) if isinstance(e, TransmissionReceived)]
    if not any(e.transmission.command == b"PONG" for e in got):
        raise InvariantViolation("router stopped serving other connections")


def router_transmissions(data: bytes) -> None:
    """``data`` as one transmission inside a well-formed block (reaches command parsing)."""
    router_blocks(pad_block(encode_batch1(data[: SMP_BLOCK_SIZE - 5])))


def client_blocks(data: bytes) -> None:
    """Raw bytes from a router after the handshake, into the client machine."""
    rng = random.Random(len(data))
    ident = _identity()
    sid = rng.randbytes(32)
    rc = RouterConnection(session_id=sid, key_hash=ident.key_hash, identity=None, random_bytes=rng.randbytes)
    client = SMPClient(key_hash=ident.key_hash, session_id=sid, random_bytes=rng.randbytes, now=NOW)
    try:
        client.receive_data(rc.data_to_send(), NOW)
        rc.receive_data(client.data_to_send())
        client.ping()
        if len(data) % SMP_BLOCK_SIZE:
            data += b"#" * (SMP_BLOCK_SIZE - len(data) % SMP_BLOCK_SIZE)
        client.receive_data(data, NOW)
        client.handle_timer(NOW + 10_000)
    except RemoteProtocolError:
        pass
    except Exception as e:  # noqa: BLE001
        raise InvariantViolation(f"client raised {type(e).__name__}: {e}") from e


def client_transmissions(data: bytes) -> None:
    """``data`` as one transmission inside a well-formed block (reaches response parsing)."""
    client_blocks(pad_block(encode_batch1(data[: SMP_BLOCK_SIZE - 5])))


def _total(parse: Callable[[bytes], object]) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        try:
            parse(data)
        except RemoteProtocolError:
            pass
        except Exception as e:  # noqa: BLE001
            raise InvariantViolation(f"{parse} raised {type(e).__name__}: {e}") from e

    return target


_PARAMS = TransmissionParams.smp(VERSION, b"s" * 32)

TARGETS: dict[str, Callable[[bytes], None]] = {
    "router": router_blocks,
    "router-transmission": router_transmissions,
    "client": client_blocks,
    "client-transmission": client_transmissions,
    "command": _total(lambda d: p.parse_command(d, VERSION)),
    "response": _total(lambda d: p.parse_response(d, VERSION)),
    "transmission": _total(lambda d: parse_transmission(_PARAMS, d)),
    "batch": _total(parse_batch),
    "client-hello": _total(ClientHello.parse),
    "server-hello": _total(ServerHello.parse),
}


def seeds() -> list[bytes]:
    """Valid transmissions and commands to mutate from."""
    rng = random.Random(0)
    key = PrivateKey.generate(KeyAlgorithm.ED25519, rng.randbytes)
    dh = PrivateKey.generate(KeyAlgorithm.X25519, rng.randbytes)
    cmds: list[p.Command] = [
        p.New(key.public(), dh.public(), None, p.SubscriptionMode.SUBSCRIBE, None, None),
        p.Sub(),
        p.Get(),
        p.Ack(rng.randbytes(24)),
        p.Key(key.public()),
        p.SKey(key.public()),
        p.Send(b"hello", True),
        p.Ping(),
        p.Off(),
        p.Del(),
        p.Que(),
        p.NKey(key.public(), dh.public()),
        p.LGet(),
    ]
    out = [p.encode_command(c, VERSION) for c in cmds]
    params = TransmissionParams.smp(VERSION, b"s" * 32)
    from sansio_smp.transmission import authorized_bytes, encode_transmission

    for c in list(out):
        corr, ent = rng.randbytes(24), rng.randbytes(24)
        sig = key.sign(authorized_bytes(params.session_id, corr, ent, c))
        out.append(encode_transmission(params, corr, ent, c, sig))
    responses: list[p.Response] = [
        p.Ok(),
        p.Pong(),
        p.End(),
        p.Msg(rng.randbytes(24), rng.randbytes(200)),
        p.Err(p.SimpleError(b"AUTH")),
    ]
    for r in responses:
        body = p.encode_response(r, VERSION)
        out.append(body)
        out.append(encode_transmission(params, rng.randbytes(24), rng.randbytes(24), body))
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: flip, insert, delete, truncate, splice or duplicate."""
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0 and b:
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randrange(1, 8))
    elif op == 2 and b:
        i = rng.randrange(len(b))
        del b[i : i + rng.randrange(1, 8)]
    elif op == 3 and b:
        del b[rng.randrange(len(b)) :]
    elif op == 4 and b:
        i = rng.randrange(len(b))
        b[i] = rng.choice([0, 0x20, 0x30, 0x31, 0xFF, len(b) & 0xFF])
    else:
        b += b[: rng.randrange(len(b) + 1)]
    return bytes(b)
