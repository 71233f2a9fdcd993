"""The pure XFTP server machine and its store log (xftp-ntf.md §1.6, §1.13; §4.1 scenarios 4–7,
9–12 at the machine level)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.errors import ParseError
from xftp import protocol as p
from xftp import store_log as sl
from xftp.server import DrainChunk, FileStore, ReceiveChunk, Respond, SendChunk, ServerConfig, XFTPServer, rounded_time

SID = b"s" * 32
K128 = 128 * 1024
T0 = 1_800_000_000.0


def rng(seed: int = 0):
    state = [seed]

    def random_bytes(n: int) -> bytes:
        state[0] += 1
        return hashlib.sha512(state[0].to_bytes(8, "big")).digest()[:n]

    return random_bytes


def key(i: int) -> PrivateKey:
    return PrivateKey(KeyAlgorithm.ED25519, bytes([i]) * 32)


def request(entity: bytes, cmd: p.Command, signer: PrivateKey | None, version: int = 3) -> p.Request:
    params = p.xftp_params(SID, version)
    dec = p.decode_request(params, p.encode_command_block(params, entity, cmd, signer))
    assert isinstance(dec, p.Request)
    return dec


def machine(**cfg) -> XFTPServer:  # type: ignore[no-untyped-def]
    sizes = cfg.pop("allowed_chunk_sizes", (64 * 1024, K128, 256 * 1024, 1 << 20, 4 << 20))
    return XFTPServer(ServerConfig("/files", allowed_chunk_sizes=sizes, **cfg), rng())


def new_file(
    m: XFTPServer, snd: PrivateKey, rcps: list[PrivateKey], size: int = K128, digest: bytes = b"d" * 32, auth=None
):  # type: ignore[no-untyped-def]
    info = p.FileInfo(snd.public(), size, digest)
    out = m.handle(request(b"", p.FNEW(info, [r.public() for r in rcps], auth), snd), T0)
    return out


def created(m: XFTPServer, snd: PrivateKey, rcps: list[PrivateKey], **kw) -> tuple[bytes, list[bytes]]:  # type: ignore[no-untyped-def]
    out = new_file(m, snd, rcps, **kw)
    assert isinstance(out, Respond) and isinstance(out.response, p.SIDS), out
    return out.response.sender_id, list(out.response.recipient_ids)


def upload(m: XFTPServer, snd: PrivateKey, sid: bytes) -> Respond:
    out = m.handle(request(sid, p.FPUT(), snd), T0)
    assert isinstance(out, ReceiveChunk)
    return m.upload_complete(sid, out.path, None)


def test_create_upload_download_flow():
    m = machine()
    snd, r1 = key(1), key(2)
    out = new_file(m, snd, [r1])
    sid, rids = out.response.sender_id, out.response.recipient_ids
    assert [type(r) for r in out.records] == [sl.AddFile, sl.AddRecipients]
    assert out.records[0].created_at == rounded_time(T0) == int(T0) // 3600 * 3600
    # not uploaded yet: NO_FILE
    dh = PrivateKey(KeyAlgorithm.X25519, bytes(32))
    assert m.handle(request(rids[0], p.FGET(dh.public()), r1), T0).response == p.ERR(p.NO_FILE)
    rc = m.handle(request(sid, p.FPUT(), snd), T0)
    assert isinstance(rc, ReceiveChunk) and rc.size == K128 and rc.path == "/files/" + sl._b(sid)
    assert m.used_storage == K128
    done = m.upload_complete(sid, rc.path, None)
    assert done.response == p.OK() and done.records == (sl.PutFile(sid, rc.path),)
    sc = m.handle(request(rids[0], p.FGET(dh.public()), r1), T0)
    assert isinstance(sc, SendChunk) and sc.size == K128 and sc.path == rc.path
    assert sc.dh_secret == dh.dh(sc.response.dh_key) and len(sc.nonce) == 24


def test_upload_errors_release_quota_and_remove_the_part():
    m = machine(quota=2 * K128)
    snd = key(1)
    sid, _ = created(m, snd, [key(2)])
    rc = m.handle(request(sid, p.FPUT(), snd), T0)
    for err in (p.DIGEST, p.SIZE, p.TIMEOUT):
        out = m.upload_complete(sid, rc.path, err)
        assert out.response == p.ERR(err) and out.remove == (rc.path,) and m.used_storage == 0
        rc = m.handle(request(sid, p.FPUT(), snd), T0)
    assert m.upload_complete(sid, rc.path, None).response == p.OK()


def test_skip_committed_upload():
    """§4.1 12: a second FPUT of an uploaded chunk is drained and does not replace it."""
    m = machine()
    snd = key(1)
    sid, _ = created(m, snd, [key(2)])
    upload(m, snd, sid)
    out = m.handle(request(sid, p.FPUT(), snd), T0)
    assert out == DrainChunk(K128) and m.used_storage == K128


def test_quota():
    """§4.1 9: quota 2×128 KiB; the third upload fails until the first file is deleted."""
    m = machine(quota=2 * K128)
    snd = key(1)
    sids = [created(m, snd, [key(2)])[0] for _ in range(3)]
    upload(m, snd, sids[0])
    upload(m, snd, sids[1])
    assert m.handle(request(sids[2], p.FPUT(), snd), T0).response == p.ERR(p.QUOTA)
    out = m.handle(request(sids[0], p.FDEL(), snd), T0)
    assert out.response == p.OK() and out.remove == (m.chunk_path(sids[0]),)
    assert upload(m, snd, sids[2]).response == p.OK()


def test_delete_and_ack():
    """§4.1 4, 5."""
    m = machine()
    snd, r1, r2 = key(1), key(2), key(3)
    sid, (rid1, rid2) = created(m, snd, [r1, r2])
    upload(m, snd, sid)
    dh = PrivateKey(KeyAlgorithm.X25519, bytes(32)).public()
    ack = m.handle(request(rid1, p.FACK(), r1), T0)
    assert ack == Respond(p.OK(), (sl.AckFile(rid1),))
    assert m.handle(request(rid1, p.FGET(dh), r1), T0).response == p.ERR(p.AUTH)
    assert m.handle(request(rid1, p.FACK(), r1), T0).response == p.ERR(p.AUTH)
    assert isinstance(m.handle(request(rid2, p.FGET(dh), r2), T0), SendChunk)
    assert m.handle(request(sid, p.FDEL(), snd), T0).response == p.OK()
    for ent, cmd, k in ((rid2, p.FGET(dh), r2), (sid, p.FDEL(), snd), (sid, p.FADD([r1.public()]), snd)):
        assert m.handle(request(ent, cmd, k), T0).response == p.ERR(p.AUTH)
    assert m.used_storage == 0 and not m.store.recipients


def test_wrong_party_wrong_key_and_sizes():
    m = machine()
    snd, r1 = key(1), key(2)
    sid, (rid,) = created(m, snd, [r1])
    # recipient ID used as a sender ID, sender key used for the recipient, wrong signer
    assert m.handle(request(rid, p.FDEL(), r1), T0).response == p.ERR(p.AUTH)
    dh = PrivateKey(KeyAlgorithm.X25519, bytes(32)).public()
    assert m.handle(request(rid, p.FGET(dh), snd), T0).response == p.ERR(p.AUTH)
    assert m.handle(request(sid, p.FDEL(), key(9)), T0).response == p.ERR(p.AUTH)
    # FNEW signed by another key than the one it carries
    info = p.FileInfo(snd.public(), K128, b"d" * 32)
    assert m.handle(request(b"", p.FNEW(info, [r1.public()]), key(9)), T0).response == p.ERR(p.AUTH)
    # §4.1 6: 96 KiB is not an allowed chunk size
    assert new_file(m, snd, [r1], size=96 * 1024).response == p.ERR(p.SIZE)
    # FADD adds recipients
    out = m.handle(request(sid, p.FADD([key(3).public(), key(4).public()]), snd), T0)
    assert isinstance(out.response, p.RIDS) and len(out.response.recipient_ids) == 2
    assert out.records == (
        sl.AddRecipients(sid, tuple(zip(out.response.recipient_ids, [key(3).public(), key(4).public()]))),
    )


@pytest.mark.parametrize(
    "new_files, server_pwd, client_pwd, ok",
    [
        (True, b"pwd", None, False),
        (True, b"pwd", b"wrong", False),
        (False, b"pwd", b"pwd", False),
        (True, b"pwd", b"pwd", True),
        (True, None, b"any", True),
    ],
)
def test_basic_auth_matrix(new_files, server_pwd, client_pwd, ok):
    """§4.1 11."""
    m = machine(allow_new_files=new_files, new_file_password=server_pwd)
    out = new_file(m, key(1), [key(2)], auth=client_pwd)
    assert isinstance(out.response, p.SIDS) if ok else out.response == p.ERR(p.AUTH)


def test_blocked_files():
    m = machine()
    snd, r1 = key(1), key(2)
    sid, (rid,) = created(m, snd, [r1])
    upload(m, snd, sid)
    info = p.BlockingInfo(p.BlockingReason.SPAM)
    out = m.block_by_recipient(rid, info)
    assert out.records == (sl.BlockFile(sid, info),) and out.remove == (m.chunk_path(sid),)
    dh = PrivateKey(KeyAlgorithm.X25519, bytes(32)).public()
    resp = m.handle(request(rid, p.FGET(dh), r1), T0).response
    assert resp == p.ERR(p.XFTPError("BLOCKED", block_info=info))
    assert resp.encode(3) == b"ERR BLOCKED reason=spam" and resp.encode(2) == b"ERR AUTH"


def test_expiration():
    """§4.1 7 (TTL 1 s): after the TTL (and the hour of rounding) files are gone."""
    m = machine(file_expiration=1)
    snd, r1 = key(1), key(2)
    sid, (rid,) = created(m, snd, [r1])
    upload(m, snd, sid)
    assert m.expire(T0).records == ()
    later = rounded_time(T0) + 3600 + 2
    out = m.expire(later)
    assert out.records == (sl.DeleteFile(sid),) and out.remove == (m.chunk_path(sid),) and m.used_storage == 0
    dh = PrivateKey(KeyAlgorithm.X25519, bytes(32)).public()
    assert m.handle(request(rid, p.FGET(dh), r1), later).response == p.ERR(p.AUTH)
    assert m.handle(request(sid, p.FDEL(), snd), later).response == p.ERR(p.AUTH)


def test_ping_and_v1_blocked_downgrade():
    m = machine()
    assert m.handle(request(b"", p.PING(), None), T0) == Respond(p.PONG())


# ---------------------------------------------------------------- store log


def test_store_log_lines_restore_and_compaction():
    """§4.1 10: FNEW(2 rcp) + FPUT ⇒ 3 compacted lines; FACK adds one; compaction drops it."""
    m = machine()
    snd, r1, r2 = key(1), key(2), key(3)
    log: list[str] = []
    out = new_file(m, snd, [r1, r2])
    log += [sl.encode_record(r) for r in out.records]
    sid, (rid1, _) = out.response.sender_id, out.response.recipient_ids
    log += [sl.encode_record(r) for r in upload(m, snd, sid).records]
    assert len(log) == 3 and [x.split()[0] for x in log] == ["FNEW", "FADD", "FPUT"]
    assert log[0].endswith(" active") and log[0].split()[3] == str(K128)
    compact = sl.compacted(m.store)  # recipients in ID order, as the reference's Map
    assert [x.split()[0] for x in compact] == ["FNEW", "FADD", "FPUT"] and compact[0] == log[0]
    assert sorted(compact[1].split()[2].split(",")) == sorted(log[1].split()[2].split(","))
    # restore into a new store
    m2 = machine()
    assert sl.restore(log, m2.store) == []
    assert sl.compacted(m2.store) == compact
    log += [sl.encode_record(r) for r in m.handle(request(rid1, p.FACK(), r1), T0).records]
    assert len(log) == 4
    m3 = machine()
    assert sl.restore(log, m3.store) == []
    compact = sl.compacted(m3.store)
    assert len(compact) == 3 and sl._b(rid1) not in compact[1]
    log2 = compact + [sl.encode_record(r) for r in m3.handle(request(sid, p.FDEL(), snd), T0).records]
    m4 = machine()
    sl.restore(log2, m4.store)
    assert sl.compacted(m4.store) == []


def test_store_log_format_is_the_references():
    info = p.FileInfo(key(1).public(), 65536, b"\x01" * 32)
    rec = sl.AddFile(b"\x02" * 16, info, 1700000000, p.BlockingInfo(p.BlockingReason.CONTENT, p.ClientNotice(10)))
    line = sl.encode_record(rec)
    spki = sl._b(key(1).public().spki())
    assert spki.startswith("MCowBQYDK2VwAyEA")
    assert line == (
        f"FNEW AgICAgICAgICAgICAgICAg== {spki} 65536 "
        'AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE= 1700000000 blocked,reason=content,notice={"ttl":10}'
    )
    assert sl.parse_record(line) == rec
    # old logs have no status
    assert sl.parse_record(line.rsplit(" ", 1)[0]).status == "active"
    assert sl.encode_record(sl.PutFile(b"\x02" * 16, "/f/x")) == "FPUT AgICAgICAgICAgICAgICAg== L2YveA=="
    for bad in ("", "FNEW x", "FOO a", "FDEL", "FADD a b:c", "FNEW a b -1 c 1", "FBLK AA== reason=x"):
        with pytest.raises(ParseError):
            sl.parse_record(bad)
    st = FileStore()
    assert sl.restore(["garbage", sl.encode_record(sl.DeleteFile(b"x"))], st) == [
        "line 1: log parsing error: bad store log line 'garbage'",
        "line 2: log processing error: AUTH",
    ]


_records = st.one_of(
    st.builds(
        sl.AddFile,
        st.binary(min_size=1, max_size=24),
        st.builds(p.FileInfo, st.just(key(1).public()), st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=32)),
        st.integers(0, 2**40),
        st.sampled_from(["active", "off", p.BlockingInfo(p.BlockingReason.SPAM), p.BlockingInfo(p.BlockingReason.CONTENT, p.ClientNotice())]),
    ),
    st.builds(sl.PutFile, st.binary(min_size=1, max_size=24), st.text(min_size=1, max_size=30)),
    st.builds(
        sl.AddRecipients,
        st.binary(min_size=1, max_size=24),
        st.lists(st.tuples(st.binary(min_size=1, max_size=24), st.just(key(2).public())), min_size=1, max_size=3),
    ),
    st.builds(sl.DeleteFile, st.binary(min_size=1, max_size=24)),
    st.builds(sl.BlockFile, st.binary(min_size=1, max_size=24), st.just(p.BlockingInfo(p.BlockingReason.SPAM, p.ClientNotice(5)))),
    st.builds(sl.AckFile, st.binary(min_size=1, max_size=24)),
)


@settings(max_examples=100, deadline=None)
@given(_records)
def test_store_log_roundtrip(rec):
    assert sl.parse_record(sl.encode_record(rec)) == rec


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=120))
def test_store_log_parser_is_total(line):
    try:
        sl.parse_record(line)
    except ParseError:
        pass
