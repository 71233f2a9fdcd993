"""Store log and message journal: codec, compaction (smp.md §6.8, §7.3 StoreLogTests), restore,
and the file driver (torn lines, compaction, failed writes)."""

from __future__ import annotations

import errno
import os

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp.addresses import QueueMode
from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.errors import ParseError
from sansio_smp.protocol import BlockingInfo, BlockingReason, ClientNotice
from sansio_smp.store_log import (
    AddNotifier,
    BlockQueue,
    CreateLink,
    CreateQueue,
    DeleteLink,
    DeleteNotifier,
    DeleteQueue,
    Message,
    MessageAdded,
    MessageRemoved,
    NewService,
    NtfCreds,
    QueueLink,
    QueueMessagesDeleted,
    QueueRec,
    QueueService,
    QueueStore,
    SecureQueue,
    ServiceRec,
    StoreError,
    SuspendQueue,
    UnblockQueue,
    UpdateKeys,
    UpdateTime,
    encode_journal_record,
    encode_record,
    parse_journal_record,
    parse_record,
    restore_messages,
    restore_queue_store,
)
from transports.store_files import StoreFiles, StoreWriteError


def det_bytes(seed: int):
    state = {"n": seed}

    def rnd(n: int) -> bytes:
        out = b""
        while len(out) < n:
            state["n"] += 1
            out += __import__("hashlib").sha256(str(state["n"]).encode()).digest()
        return out[:n]

    return rnd


RND = det_bytes(1)


def pub(alg: KeyAlgorithm = KeyAlgorithm.ED25519):
    return PrivateKey.generate(alg, RND).public()


# ---------------------------------------------------------------- exact line format


def test_create_line_exact_format():
    k = PrivateKey(KeyAlgorithm.ED25519, bytes(range(32))).public()
    rec = QueueRec((k,), b"\x01" * 32, b"\x02" * 24, None, QueueMode.MESSAGING, updated_at=1700006400)
    line = encode_record(CreateQueue(b"\x03" * 24, rec))
    assert line == (
        "CREATE rid=AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMD "
        f"rk={__import__('base64').urlsafe_b64encode(k.spki()).decode()} "
        "rdh=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE= sid=AgICAgICAgICAgICAgICAgICAgICAgIC sk= "
        "queue_mode=M updated_at=1700006400"
    )
    assert parse_record(line) == CreateQueue(b"\x03" * 24, rec)


def test_other_lines_exact_format():
    k = PrivateKey(KeyAlgorithm.ED25519, bytes(range(32))).public()
    kb = __import__("base64").urlsafe_b64encode(k.spki()).decode()
    assert encode_record(SecureQueue(b"ab", k)) == f"SECURE YWI= {kb}"
    assert encode_record(UpdateKeys(b"ab", (k, k))) == f"KEYS YWI= {kb},{kb}"
    assert encode_record(DeleteQueue(b"ab")) == "DELETE YWI="
    assert encode_record(DeleteNotifier(b"ab")) == "NDELETE YWI="
    assert encode_record(SuspendQueue(b"ab")) == "SUSPEND YWI="
    assert encode_record(DeleteLink(b"ab")) == "LDELETE YWI="
    assert encode_record(UpdateTime(b"ab", 86400)) == "TIME YWI= 86400"
    assert encode_record(BlockQueue(b"ab", BlockingInfo(BlockingReason.SPAM))) == "BLOCK YWI= reason=spam"
    assert encode_record(UnblockQueue(b"ab")) == "UNBLOCK YWI="
    assert encode_record(CreateLink(b"ab", b"li", b"f", b"u")) == "LINK YWI= bGk= Zg== dQ=="
    assert encode_record(QueueService(b"ab", "N", None)) == "QUEUE_SERVICE YWI= N "


def test_legacy_snd_secure_and_status_parse():
    k = pub()
    base = f"CREATE rid=YWI= rk={__import__('base64').urlsafe_b64encode(k.spki()).decode()} rdh={'A' * 43}= sid=YWI= sk="
    r = parse_record(base + " sndSecure=T")
    assert isinstance(r, CreateQueue) and r.rec.queue_mode is QueueMode.MESSAGING
    assert parse_record(base + " sndSecure=F").rec.queue_mode is QueueMode.CONTACT
    assert parse_record(base).rec.queue_mode is None
    assert parse_record(base + " status=active").rec.status == "active"
    assert parse_record(base + " status=off").rec.status == "off"
    blocked = parse_record(base + ' status=blocked,reason=content,notice={"ttl":60}').rec.status
    assert blocked == BlockingInfo(BlockingReason.CONTENT, ClientNotice(60))


@pytest.mark.parametrize(
    "line",
    [
        "",
        "CREATE",
        "CREATE rid=",
        "SECURE YWI=",
        "SECURE YWI= notakey",
        "TIME YWI= x",
        "BLOCK YWI= reason=other",
        "FOO YWI=",
        "DELETE YWI= extra",
        "DELETE ***",
        "QUEUE_SERVICE YWI= X ",
        "CREATE rid=YWI= rk=MCow rdh=AA== sid=YWI= sk=",
        "NEW_SERVICE service_id=YWI= role=Z cert=YWI= cert_hash=YWI= created_at=1",
    ],
)
def test_bad_lines_are_parse_errors(line):
    with pytest.raises(ParseError):
        parse_record(line)


# ---------------------------------------------------------------- Hypothesis round trips

ids = st.binary(min_size=1, max_size=32)
secrets_ = st.binary(min_size=32, max_size=32)
datas = st.binary(min_size=0, max_size=64)
auth_keys = st.sampled_from([KeyAlgorithm.ED25519, KeyAlgorithm.ED448, KeyAlgorithm.X25519]).flatmap(
    lambda alg: st.binary(min_size=57, max_size=57).map(lambda b: PrivateKey(alg, b[: {KeyAlgorithm.ED448: 57}.get(alg, 32)]).public())
)
ntf_creds = st.builds(NtfCreds, ids, auth_keys, secrets_, st.none() | ids)
blocking = st.builds(
    BlockingInfo,
    st.sampled_from(list(BlockingReason)),
    st.none() | st.builds(ClientNotice, st.none() | st.integers(-(2**63), 2**63 - 1)),
)
queue_recs = st.builds(
    QueueRec,
    st.lists(auth_keys, min_size=1, max_size=3).map(tuple),
    secrets_,
    ids,
    st.none() | auth_keys,
    st.sampled_from([None, QueueMode.MESSAGING, QueueMode.CONTACT]),
    st.none() | st.builds(QueueLink, ids, datas, datas),
    st.none() | ntf_creds,
    st.sampled_from(["active", "off"]) | blocking,
    st.none() | st.integers(min_value=0, max_value=2**40),
    st.none() | ids,
)
records = st.one_of(
    st.builds(CreateQueue, ids, queue_recs),
    st.builds(CreateLink, ids, ids, datas, datas),
    st.builds(DeleteLink, ids),
    st.builds(SecureQueue, ids, auth_keys),
    st.builds(UpdateKeys, ids, st.lists(auth_keys, min_size=1, max_size=3).map(tuple)),
    st.builds(AddNotifier, ids, ntf_creds),
    st.builds(SuspendQueue, ids),
    st.builds(BlockQueue, ids, blocking),
    st.builds(UnblockQueue, ids),
    st.builds(DeleteQueue, ids),
    st.builds(DeleteNotifier, ids),
    st.builds(UpdateTime, ids, st.integers(min_value=0, max_value=2**40)),
    st.builds(
        NewService,
        st.builds(ServiceRec, ids, st.sampled_from(["M", "N", "P"]), st.lists(ids, min_size=1, max_size=3).map(tuple), ids, st.integers(0, 2**40)),
    ),
    st.builds(QueueService, ids, st.sampled_from(["R", "N"]), st.none() | ids),
)


def _blocked_rec_then_rsrv(r) -> bool:
    # the reference's notice parser takes the rest of the line, so a notice followed by rsrv=
    # cannot round-trip (same as the reference); exclude that one combination
    return (
        isinstance(r, CreateQueue)
        and isinstance(r.rec.status, BlockingInfo)
        and r.rec.status.notice is not None
        and r.rec.rcv_service_id is not None
    )


@settings(max_examples=300, deadline=None)
@given(records)
def test_record_round_trip(r):
    if _blocked_rec_then_rsrv(r):
        return
    line = encode_record(r)
    assert "\n" not in line
    assert parse_record(line) == r
    assert parse_record(line.encode()) == r


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_record_total(data):
    try:
        parse_record(data)
    except ParseError:
        pass


journal_records = st.one_of(
    st.builds(MessageAdded, ids, st.builds(Message, ids, st.integers(-(2**40), 2**40), st.booleans(), st.binary(max_size=100))),
    st.builds(MessageAdded, ids, st.builds(Message, ids, st.integers(0, 2**40), st.just(False), st.just(b""), st.just(True))),
    st.builds(MessageRemoved, ids, ids),
    st.builds(QueueMessagesDeleted, ids),
)


@settings(max_examples=300, deadline=None)
@given(journal_records)
def test_journal_round_trip(r):
    assert parse_journal_record(encode_journal_record(r)) == r


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parse_journal_total(data):
    try:
        parse_journal_record(data)
    except ParseError:
        pass


# ---------------------------------------------------------------- compaction (StoreLogTests, §7.3)


def _replay(records_):
    return restore_queue_store([encode_record(r) for r in records_])


def _check_compaction(saved, compacted, state):
    lines = [encode_record(r) for r in saved]
    for _ in range(3):  # the reference re-reads its own compacted log three times
        store, warnings = restore_queue_store(lines)
        assert warnings == []
        assert store.queues == state
        out = store.compacted_records()
        assert out == compacted
        lines = [encode_record(r) for r in out]


def _new_queue(mode: QueueMode, link=None) -> tuple[bytes, QueueRec]:
    return RND(24), QueueRec((pub(),), RND(32), RND(24), None, mode, link, updated_at=1700006400)


@pytest.mark.parametrize("mode", [QueueMode.MESSAGING, QueueMode.CONTACT])
def test_store_log_compaction_cases(mode):
    rid, qr = _new_queue(mode)
    lnk = RND(24)
    qd = (b"fixed data", b"user data")
    rid2, qr2 = _new_queue(mode, QueueLink(lnk, *qd))
    ntf = NtfCreds(b"ijkl", pub(KeyAlgorithm.X25519), RND(32))
    svc = ServiceRec(RND(24), "N", (b"cert-der",), RND(32), 1700006400)
    skey = pub()
    new_keys = (pub(), pub())
    cases = [
        ([CreateQueue(rid, qr)], [CreateQueue(rid, qr)], {rid: qr}),
        ([CreateQueue(rid2, qr2)], [CreateQueue(rid2, qr2)], {rid2: qr2}),
        (
            [CreateQueue(rid2, attrs.evolve(qr2, link=None)), CreateLink(rid2, lnk, *qd)],
            [CreateQueue(rid2, qr2)],
            {rid2: qr2},
        ),
        (
            [CreateQueue(rid2, qr2), DeleteLink(rid2)],
            [CreateQueue(rid2, attrs.evolve(qr2, link=None))],
            {rid2: attrs.evolve(qr2, link=None)},
        ),
        (
            [CreateQueue(rid, qr), SecureQueue(rid, skey)],
            [CreateQueue(rid, attrs.evolve(qr, sender_key=skey))],
            {rid: attrs.evolve(qr, sender_key=skey)},
        ),
        ([CreateQueue(rid, qr), DeleteQueue(rid)], [], {}),
        (
            [CreateQueue(rid, qr), AddNotifier(rid, ntf)],
            [CreateQueue(rid, attrs.evolve(qr, notifier=ntf))],
            {rid: attrs.evolve(qr, notifier=ntf)},
        ),
        (
            [CreateQueue(rid, qr), AddNotifier(rid, ntf), NewService(svc), QueueService(rid, "N", svc.service_id)],
            [NewService(svc), CreateQueue(rid, attrs.evolve(qr, notifier=attrs.evolve(ntf, ntf_service_id=svc.service_id)))],
            {rid: attrs.evolve(qr, notifier=attrs.evolve(ntf, ntf_service_id=svc.service_id))},
        ),
        (
            [CreateQueue(rid, qr), AddNotifier(rid, ntf), DeleteNotifier(rid)],
            [CreateQueue(rid, qr)],
            {rid: qr},
        ),
        (
            [CreateQueue(rid, qr), UpdateTime(rid, 1700092800)],
            [CreateQueue(rid, attrs.evolve(qr, updated_at=1700092800))],
            {rid: attrs.evolve(qr, updated_at=1700092800)},
        ),
        (
            [CreateQueue(rid, qr), UpdateKeys(rid, new_keys)],
            [CreateQueue(rid, attrs.evolve(qr, recipient_keys=new_keys))],
            {rid: attrs.evolve(qr, recipient_keys=new_keys)},
        ),
    ]
    for saved, compacted, state in cases:
        _check_compaction(saved, compacted, state)


def test_apply_semantics():
    rid, qr = _new_queue(QueueMode.MESSAGING)
    store = QueueStore()
    store.apply(CreateQueue(rid, qr))
    with pytest.raises(StoreError) as e:
        store.apply(CreateQueue(rid, qr))
    assert e.value.code == "DUPLICATE_"
    k1, k2 = pub(), pub()
    store.apply(SecureQueue(rid, k1))
    store.apply(SecureQueue(rid, k1))  # same key again: fine
    with pytest.raises(StoreError):
        store.apply(SecureQueue(rid, k2))
    assert store.by_sender(qr.sender_id) == rid
    ntf = NtfCreds(b"n1", pub(KeyAlgorithm.X25519), RND(32))
    store.apply(AddNotifier(rid, ntf))
    assert store.by_notifier(b"n1") == rid
    store.apply(AddNotifier(rid, attrs.evolve(ntf, notifier_id=b"n2")))
    assert store.by_notifier(b"n1") is None and store.by_notifier(b"n2") == rid
    store.apply(CreateLink(rid, b"L", b"f", b"u"))
    store.apply(CreateLink(rid, b"L", b"f", b"u2"))  # user data may change
    with pytest.raises(StoreError):
        store.apply(CreateLink(rid, b"L", b"f2", b"u"))  # fixed data may not
    with pytest.raises(StoreError):
        store.apply(CreateLink(rid, b"M", b"f", b"u"))  # nor the link id
    assert store.by_link(b"L") == rid
    store.apply(DeleteQueue(rid))
    assert store.queues == {} and store.senders == {} and store.notifiers == {} and store.links == {}
    with pytest.raises(StoreError):
        store.apply(SecureQueue(rid, k1))


def test_restore_skips_bad_and_inapplicable_lines():
    rid, qr = _new_queue(QueueMode.MESSAGING)
    lines = ["garbage", encode_record(CreateQueue(rid, qr)), encode_record(SecureQueue(b"nope", pub())), ""]
    store, warnings = restore_queue_store(lines)
    assert list(store.queues) == [rid]
    assert len(warnings) == 2


# ---------------------------------------------------------------- journal restore


def test_restore_messages_order_ack_expiry_and_deleted_queues():
    r1, r2, r3 = b"q1", b"q2", b"q3"
    m = [Message(bytes([i]) * 24, 1000 + i, i % 2 == 0, b"body%d" % i) for i in range(5)]
    quota = Message(b"Q" * 24, 1010, quota=True)
    recs = [
        MessageAdded(r1, m[0]),
        MessageAdded(r1, m[1]),
        MessageAdded(r2, m[2]),
        MessageRemoved(r1, m[0].msg_id),
        MessageAdded(r1, m[3]),
        MessageAdded(r1, quota),
        MessageAdded(r3, m[4]),
        QueueMessagesDeleted(r2),
    ]
    lines = [encode_journal_record(r) for r in recs]
    out = restore_messages(lines, {r1, r2}, now=2000, ttl=None)
    assert out.queues == {r1: [m[1], m[3], quota]}
    assert (out.stored, out.expired) == (2, 0)
    # TTL: messages older than now - ttl dropped, the quota marker kept
    out = restore_messages(lines, {r1, r2}, now=1003 + 100, ttl=100)
    assert out.queues == {r1: [m[3], quota]}
    assert (out.stored, out.expired) == (1, 1)


# ---------------------------------------------------------------- the file driver


def _records_for_files():
    rid, qr = _new_queue(QueueMode.MESSAGING)
    msg = Message(RND(24), 1700000000, False, b"hello")
    return rid, qr, msg


def test_store_files_append_restore_compact(tmp_path):
    rid, qr, msg = _records_for_files()
    files = StoreFiles(str(tmp_path))
    state = files.open(now=1700000000, message_ttl=None)
    assert state.store.queues == {} and state.messages == {}
    files.append([encode_record(CreateQueue(rid, qr)), encode_record(SecureQueue(rid, pub()))], [encode_journal_record(MessageAdded(rid, msg))])
    files.close()
    files = StoreFiles(str(tmp_path))
    state = files.open(now=1700000001, message_ttl=None)
    assert list(state.store.queues) == [rid]
    assert state.messages == {rid: [msg]}
    files.close()
    # compacted: one CREATE line; the previous file kept as .bak
    lines = open(files.queue_log_path).read().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CREATE ")
    assert os.path.exists(files.queue_log_path + ".bak")


def test_store_files_torn_last_line_dropped(tmp_path):
    rid, qr, msg = _records_for_files()
    files = StoreFiles(str(tmp_path))
    files.open(now=0, message_ttl=None)
    files.append([encode_record(CreateQueue(rid, qr))], [encode_journal_record(MessageAdded(rid, msg))])
    files.close()
    with open(files.journal_path, "ab") as f:  # a SIGKILL in the middle of the next write
        f.write(b"M " + b"A" * 10)
    with open(files.queue_log_path, "ab") as f:
        f.write(b"DELETE ")
    state = StoreFiles(str(tmp_path)).open(now=0, message_ttl=None)
    assert list(state.store.queues) == [rid]
    assert state.messages == {rid: [msg]}
    assert state.warnings == []


def test_store_files_failed_write_rolls_back(tmp_path, monkeypatch):
    rid, qr, msg = _records_for_files()
    files = StoreFiles(str(tmp_path))
    files.open(now=0, message_ttl=None)
    files.append([encode_record(CreateQueue(rid, qr))], [])
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        # write half of the data, then report a full disk
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(StoreWriteError) as e:
        files.append([encode_record(SecureQueue(rid, pub()))], [encode_journal_record(MessageAdded(rid, msg))])
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "write", real_write)
    # the half-written record is gone; appending works again
    assert open(files.queue_log_path).read().count("\n") == 1
    msg2 = attrs.evolve(msg, msg_id=RND(24))
    files.append([], [encode_journal_record(MessageAdded(rid, msg2))])
    files.close()
    state = StoreFiles(str(tmp_path)).open(now=0, message_ttl=None)
    assert state.warnings == []
    assert state.store.queues[rid].sender_key is None
    assert state.messages == {rid: [msg2]}


def test_store_files_uses_reference_start_backup(tmp_path):
    rid, qr, _ = _records_for_files()
    files = StoreFiles(str(tmp_path))
    (tmp_path / "smp-server-store.log.start").write_text(encode_record(CreateQueue(rid, qr)) + "\n")
    (tmp_path / "smp-server-store.log").write_text("")  # incomplete compaction output
    state = files.open(now=0, message_ttl=None)
    assert list(state.store.queues) == [rid]
    assert not (tmp_path / "smp-server-store.log.start").exists()


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ABCxyz019-_=+/", max_size=12))
def test_fast_base64_accepts_exactly_what_the_shared_decoder_accepts(text):
    from sansio_smp import store_log as SL
    from sansio_smp.encoding import b64url_decode

    try:
        expected = b64url_decode(text)
    except ParseError:
        expected = None
    m = SL._B64_TOKEN.fullmatch(text)
    if m is None:
        got = None
    else:
        try:
            got = SL._b64d(text)
        except ParseError:
            got = None
    assert got == expected


def test_entity_status_text_shared_with_xftp() -> None:
    """``ServerEntityStatus``'s text, as the SMP ``status=`` and the XFTP ``FNEW`` status use it."""
    from sansio_smp.store_log import encode_status, parse_status

    cases = {
        "active": "active",
        "off": "off",
        "blocked,reason=spam": BlockingInfo(BlockingReason.SPAM),
        'blocked,reason=content,notice={"ttl":86400}': BlockingInfo(BlockingReason.CONTENT, ClientNotice(86400)),
        "blocked,reason=spam,notice={}": BlockingInfo(BlockingReason.SPAM, ClientNotice()),
    }
    for text, status in cases.items():
        assert parse_status(text) == status and encode_status(status) == text
    for bad in ("", "Active", "active ", "offx", "blocked,", "blocked,reason=other", "blocked,reason=spam,notice=[]"):
        with pytest.raises(ParseError):
            parse_status(bad)
    assert BlockingInfo.decode(b'reason=content,notice={"ttl":5}') == BlockingInfo(BlockingReason.CONTENT, ClientNotice(5))
