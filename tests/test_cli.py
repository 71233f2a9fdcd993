"""``smp`` (sansio_smp/cli.py) against a real ``smp-server`` subprocess on 127.0.0.1, and the demo.

The router is initialised with ``smp-server init`` and started with ``smp-server start`` (its INI
edited to listen on a free port with a queue quota of 3). Most CLI runs call ``cli.main`` in process
(fast); a few run ``python -m sansio_smp.cli`` as a subprocess to check the entry point."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from sansio_smp import cli
from sansio_smp.addresses import SMPQueueUri

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("smp-server")
    subprocess.run(
        [sys.executable, "-m", "sansio_smp.server_cli", "init", "--dir", str(d), "--no-password", "--port", "5223"],
        check=True, env=ENV, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    ini = (d / "smp-server.ini").read_text()
    ini = re.sub(r"(?m)^port = .*$", "port = 0", ini)
    ini = re.sub(r"(?m)^# listen = .*$", "listen = 127.0.0.1", ini)
    ini = re.sub(r"(?m)^msg_queue_quota = .*$", "msg_queue_quota = 3", ini)
    ini = re.sub(r"(?m)^pending_end_interval = .*$", "pending_end_interval = 1", ini)
    (d / "smp-server.ini").write_text(ini)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sansio_smp.server_cli", "start", "--dir", str(d)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on port (\d+); fingerprint (\S+)", line)
        assert m, f"router did not start: {line!r}"
        yield f"smp://{m.group(2)}@127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


def smp(state: Path, *args: str, stdin: bytes = b"", capsys: pytest.CaptureFixture | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> int:  # fmt: skip
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return cli.main(["--state", str(state), *args])


def out_err(capsys: pytest.CaptureFixture) -> tuple[str, str]:
    r = capsys.readouterr()
    return r.out, r.err


def create(state: Path, router: str, capsys: pytest.CaptureFixture, name: str | None = None) -> str:
    args = ["create", router] + (["--name", name] if name else [])
    assert smp(state, *args) == 0
    out, err = out_err(capsys)
    assert "give this queue URI to the sender" in err
    return out.strip()


def test_create_prints_a_queue_uri_and_keeps_keys_private(tmp_path: Path, router: str, capsys) -> None:
    state = tmp_path / "alice.json"
    uri = create(state, router, capsys, "inbox")
    parsed = SMPQueueUri.from_str(uri)
    assert uri.startswith(router + "/") and "&dh=" in uri and uri.endswith("&q=m&k=s")
    assert parsed.address.sender_can_secure and len(parsed.address.sender_id) == 24
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    data = json.loads(state.read_text())
    assert [q["name"] for q in data["queues"]] == ["inbox"] and data["queues"][0]["uri"] == uri
    assert [p.name for p in tmp_path.iterdir()] == ["alice.json"]  # no temporary files left
    assert smp(state, "list") == 0
    assert out_err(capsys)[0] == f"inbox\t{uri}\n"


def test_send_and_receive_messages(tmp_path: Path, router: str, capsys, monkeypatch) -> None:
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    uri = create(alice, router, capsys)
    assert smp(bob, "send", uri, "hello world") == 0
    assert smp(bob, "send", uri, "-", stdin=b"from stdin\n", monkeypatch=monkeypatch) == 0
    sender = json.loads(bob.read_text())["senders"]
    assert [(s["secured"], s["confirmed"]) for s in sender.values()] == [(True, True)]
    assert smp(alice, "receive") == 0
    assert out_err(capsys)[0] == "hello world\nfrom stdin\n"
    assert smp(alice, "receive", "q1") == 0  # acknowledged: nothing left
    assert out_err(capsys)[0] == ""
    assert json.loads(alice.read_text())["queues"][0]["sender_e2e_key"]


def test_receive_follow_with_timeout_in_a_subprocess(tmp_path: Path, router: str, capsys) -> None:
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    uri = create(alice, router, capsys)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sansio_smp.cli", "--state", str(alice), "receive", "--follow", "--timeout", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT,
    )  # fmt: skip
    time.sleep(1.0)
    for text in ("one", "two", "three"):
        assert smp(bob, "send", uri, text) == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == b"one\ntwo\nthree\n"


def test_quota_auth_and_usage_errors(tmp_path: Path, router: str, capsys) -> None:
    alice, bob, eve = tmp_path / "alice.json", tmp_path / "bob.json", tmp_path / "eve.json"
    uri = create(alice, router, capsys)
    for i in range(3):
        assert smp(bob, "send", uri, f"m{i}") == 0
    assert smp(bob, "send", uri, "too many") == cli.EXIT_QUOTA
    assert "QUOTA" in out_err(capsys)[1]
    # another sender cannot take over a secured queue
    assert smp(eve, "send", uri, "hi") == cli.EXIT_AUTH
    assert "AUTH" in out_err(capsys)[1]
    assert smp(bob, "send", "smp://not-a-uri", "x") == cli.EXIT_USAGE
    assert "bad queue URI" in out_err(capsys)[1]
    assert smp(bob, "send", uri, "x" * 16000) == cli.EXIT_USAGE
    assert "too long" in out_err(capsys)[1]
    assert smp(alice, "receive", "nosuchqueue") == cli.EXIT_USAGE
    assert smp(alice, "create", "not an address") == cli.EXIT_USAGE
    # the marker after the quota is reported on stderr, the messages on stdout
    assert smp(alice, "receive") == 0
    out, err = out_err(capsys)
    assert out == "m0\nm1\nm2\n" and "full" in err


def test_connection_errors(tmp_path: Path, router: str, capsys) -> None:
    state = tmp_path / "s.json"
    key_hash = router.split("//")[1].split("@")[0]
    assert smp(state, "create", f"smp://{key_hash}@127.0.0.1:1") == cli.EXIT_CONNECT
    assert "connection refused" in out_err(capsys)[1]
    wrong = router.replace(key_hash, "A" * 43 + "=")
    assert smp(state, "create", wrong) == cli.EXIT_CONNECT
    assert "key hash" in out_err(capsys)[1]
    assert not state.exists()


def test_delete(tmp_path: Path, router: str, capsys) -> None:
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    uri = create(alice, router, capsys, "gone")
    assert smp(bob, "send", uri, "before") == 0
    assert smp(alice, "delete", "gone") == 0
    assert json.loads(alice.read_text())["queues"] == []
    assert smp(bob, "send", uri, "after") == cli.EXIT_AUTH
    assert smp(alice, "delete", "gone") == cli.EXIT_USAGE


def test_help_everywhere(capsys) -> None:
    for args in ([], ["create"], ["send"], ["receive"], ["delete"], ["list"]):
        with pytest.raises(SystemExit) as e:
            cli.main([*args, "--help"])
        assert e.value.code == 0
        assert "usage: smp" in out_err(capsys)[0]


def test_entry_point_subprocess(tmp_path: Path, router: str) -> None:
    state = tmp_path / "st.json"
    run = lambda *a, **kw: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "sansio_smp.cli", "--state", str(state), *a], env=ENV, cwd=ROOT,
        capture_output=True, timeout=60, **kw,
    )  # fmt: skip
    created = run("create", router)
    assert created.returncode == 0, created.stderr
    uri = created.stdout.decode().strip()
    assert run("send", uri, input=b"piped message\n").returncode == 0
    received = run("receive")
    assert received.returncode == 0 and received.stdout == b"piped message\n"


def test_demo_runs_and_exits_0() -> None:
    r = subprocess.run([sys.executable, "-m", "sansio_smp.demo"], env=ENV, cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "listening with TLS on 127.0.0.1:" in out
    assert "decrypted: b'Hello from sansio-smp!'" in out
    assert "[router] stopped" in out
