"""``smp-server init | cert | address | --help`` and the INI settings (smp.md §2.3, §6.11)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

from sansio_smp import server_cli
from sansio_smp.crypto import sha256
from sansio_smp.encoding import b64url_decode, b64url_encode
from sansio_smp.x509 import pem_to_der_list, validate_server_chain

NOW = dt.datetime.now(dt.timezone.utc)


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = server_cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def read_der(path) -> bytes:
    ders = pem_to_der_list(path.read_bytes())
    assert len(ders) == 1
    return ders[0]


def test_init_writes_identity_config_and_prints_address(tmp_path, capsys):
    d = tmp_path / "srv"
    rc, out, _ = run(capsys, "init", "--dir", str(d), "--host", "smp.example.com", "--port", "7001",
                     "--sign-algorithm", "ED448", "--password", "s3cret")
    assert rc == 0
    for name in ("smp-server.ini", "ca.crt", "ca.key", "server.crt", "server.key", "fingerprint"):
        assert (d / name).exists(), name
    ca_der, srv_der = read_der(d / "ca.crt"), read_der(d / "server.crt")
    fingerprint = (d / "fingerprint").read_text().strip()
    assert b64url_decode(fingerprint) == sha256(ca_der)  # key hash = SHA-256 of the CA cert DER
    assert fingerprint == b64url_encode(sha256(ca_der))
    address = out.strip().splitlines()[-1]
    assert address == f"smp://{fingerprint}:s3cret@smp.example.com:7001"
    ca, srv = cx509.load_der_x509_certificate(ca_der), cx509.load_der_x509_certificate(srv_der)
    assert isinstance(ca.public_key(), ed448.Ed448PublicKey) and isinstance(srv.public_key(), ed448.Ed448PublicKey)
    assert ca.subject.get_attributes_for_oid(cx509.NameOID.COMMON_NAME)[0].value == "SMP server CA"
    assert ca.subject.get_attributes_for_oid(cx509.NameOID.ORGANIZATION_NAME)[0].value == "SimpleX"
    assert srv.subject.get_attributes_for_oid(cx509.NameOID.COMMON_NAME)[0].value == "smp.example.com"
    assert srv.issuer == ca.subject
    validate_server_chain([srv_der, ca_der], sha256(ca_der), NOW)
    assert oct((d / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((d / "server.key").stat().st_mode & 0o777) == "0o600"
    s = server_cli.load_settings(str(d))
    assert (s.host, s.ports, s.create_password, s.store_log, s.msg_queue_quota) == (
        "smp.example.com", (7001,), "s3cret", True, 128)
    assert s.message_ttl == 21 * 86400 and s.new_queues


def test_init_defaults_random_password_ed25519_port_5223(tmp_path, capsys):
    d = tmp_path / "srv"
    rc, out, _ = run(capsys, "init", "--dir", str(d))
    assert rc == 0
    fingerprint = (d / "fingerprint").read_text().strip()
    m = re.fullmatch(r"smp://([A-Za-z0-9_=-]+):([A-Za-z0-9_=-]+)@127\.0\.0\.1:5223", out.strip().splitlines()[-1])
    assert m and m.group(1) == fingerprint and len(b64url_decode(m.group(2))) == 32
    ca = cx509.load_der_x509_certificate(read_der(d / "ca.crt"))
    assert isinstance(ca.public_key(), ed25519.Ed25519PublicKey)
    assert server_cli.load_settings(str(d)).create_password == m.group(2)


def test_init_no_password_and_address(tmp_path, capsys):
    d = tmp_path / "srv"
    rc, out, _ = run(capsys, "init", "--dir", str(d), "--no-password", "--port", "5300")
    assert rc == 0
    fingerprint = (d / "fingerprint").read_text().strip()
    assert out.strip().splitlines()[-1] == f"smp://{fingerprint}@127.0.0.1:5300"
    assert server_cli.load_settings(str(d)).create_password is None
    rc, out, _ = run(capsys, "address", "--dir", str(d))
    assert rc == 0 and out.strip() == f"smp://{fingerprint}@127.0.0.1:5300"


def test_init_refuses_existing_dir_and_bad_password(tmp_path, capsys):
    d = tmp_path / "srv"
    assert run(capsys, "init", "--dir", str(d), "--no-password")[0] == 0
    rc, _, err = run(capsys, "init", "--dir", str(d), "--no-password")
    assert rc == 1 and "already initialised" in err
    rc, _, err = run(capsys, "init", "--dir", str(tmp_path / "x"), "--password", "a@b")
    assert rc == 1 and "password" in err


def test_cert_renews_online_certificate_same_identity(tmp_path, capsys):
    d = tmp_path / "srv"
    run(capsys, "init", "--dir", str(d), "--no-password")
    ca_before, srv_before = (d / "ca.crt").read_bytes(), (d / "server.crt").read_bytes()
    key_before = (d / "server.key").read_bytes()
    _, addr_before, _ = run(capsys, "address", "--dir", str(d))
    rc, out, _ = run(capsys, "cert", "--dir", str(d))
    assert rc == 0
    assert (d / "ca.crt").read_bytes() == ca_before
    assert (d / "server.crt").read_bytes() != srv_before and (d / "server.key").read_bytes() != key_before
    _, addr_after, _ = run(capsys, "address", "--dir", str(d))
    assert addr_after == addr_before
    ca_der, srv_der = read_der(d / "ca.crt"), read_der(d / "server.crt")
    validate_server_chain([srv_der, ca_der], sha256(ca_der), NOW)
    identity = server_cli.load_identity(str(d))
    assert identity.server_key.public().raw == cx509.load_der_x509_certificate(srv_der).public_key().public_bytes_raw()


def test_cert_needs_the_offline_key(tmp_path, capsys):
    d = tmp_path / "srv"
    run(capsys, "init", "--dir", str(d), "--no-password")
    (d / "ca.key").unlink()
    rc, _, err = run(capsys, "cert", "--dir", str(d))
    assert rc == 1 and "ca.key" in err


def test_missing_dir_is_a_clear_error(tmp_path, capsys):
    rc, _, err = run(capsys, "address", "--dir", str(tmp_path / "nope"))
    assert rc == 1 and "init" in err


def test_default_dir_from_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SMP_SERVER_DIR", str(tmp_path / "envdir"))
    assert run(capsys, "init", "--no-password")[0] == 0
    assert (tmp_path / "envdir" / "smp-server.ini").exists()
    monkeypatch.delenv("SMP_SERVER_DIR")
    monkeypatch.chdir(tmp_path)
    assert server_cli.default_dir() == "smp-server"


@pytest.mark.parametrize("args", [[], ["init"], ["start"], ["cert"], ["address"]])
def test_help(args, capsys):
    with pytest.raises(SystemExit) as e:
        server_cli.main([*args, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: smp-server" in out
    if args:
        assert "--dir" in out
    if args == ["init"]:
        for opt in ("--host", "--port", "--sign-algorithm", "--password", "--no-password"):
            assert opt in out


def test_ini_options(tmp_path, capsys):
    d = tmp_path / "srv"
    run(capsys, "init", "--dir", str(d), "--no-password")
    ini = d / "smp-server.ini"
    text = ini.read_text()
    text = text.replace("new_queues = on", "new_queues = off").replace("msg_queue_quota = 128", "msg_queue_quota = 7")
    text = text.replace("expire_messages_days = 21", "expire_messages_days = 0").replace("enable = on", "enable = off")
    text = text.replace("port = 5223", "port = 5223,5224")
    ini.write_text(text)
    s = server_cli.load_settings(str(d))
    assert (s.new_queues, s.msg_queue_quota, s.message_ttl, s.store_log, s.ports) == (False, 7, None, False, (5223, 5224))
    from transports.router_runtime import router_config_from_settings

    cfg = router_config_from_settings(s)
    assert (cfg.allow_new_queues, cfg.queue_quota, cfg.message_ttl, cfg.persistence) == (False, 7, None, False)
    ini.write_text(text.replace("msg_queue_quota = 7", "msg_queue_quota = lots"))
    with pytest.raises(server_cli.CLIError):
        server_cli.load_settings(str(d))


def test_inactive_clients_ini(tmp_path, capsys):
    """[INACTIVE_CLIENTS] (smp.md §3.7): ``init`` writes disconnect = on, ttl 21600, check 3600
    (Main/Init.hs); an absent section or disconnect = off is off; with on both keys are required."""
    from sansio_smp.expiration import InactiveClients

    d = tmp_path / "srv"
    run(capsys, "init", "--dir", str(d), "--no-password")
    ini = d / "smp-server.ini"
    text = ini.read_text()
    assert "[INACTIVE_CLIENTS]\n# TTL and interval to check inactive clients\ndisconnect = on\nttl = 21600\ncheck_interval = 3600\n" in text
    assert server_cli.load_settings(str(d)).inactive_clients == InactiveClients(21600, 3600)

    def settings_with(section: str):  # type: ignore[no-untyped-def]
        head = text[: text.index("[INACTIVE_CLIENTS]")]
        ini.write_text(head + section)
        return server_cli.load_settings(str(d))

    assert settings_with("[INACTIVE_CLIENTS]\ndisconnect = on\nttl = 60\ncheck_interval = 5\n").inactive_clients == InactiveClients(60, 5)
    assert settings_with("[INACTIVE_CLIENTS]\ndisconnect = off\nttl = 60\ncheck_interval = 5\n").inactive_clients is None
    assert settings_with("[INACTIVE_CLIENTS]\ndisconnect = off\n").inactive_clients is None
    assert settings_with("").inactive_clients is None  # no section: settingIsOn gives Nothing
    for bad in ("disconnect = on\nttl = 60\n", "disconnect = on\ncheck_interval = 5\n",
                "disconnect = on\nttl = 6h\ncheck_interval = 5\n", "disconnect = on\nttl = 0\ncheck_interval = 5\n",
                "disconnect = maybe\nttl = 60\ncheck_interval = 5\n"):
        with pytest.raises(server_cli.CLIError):
            settings_with("[INACTIVE_CLIENTS]\n" + bad)
