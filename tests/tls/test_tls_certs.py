"""check_pair and the generator on real certificates: airlock's own, openssl's, and ones with chosen
dates; every refusal names the file it is about."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tls_support import Pair, make_cert, openssl_pair, past

from airlock.config import Settings
from airlock.errors import InvalidInput
from airlock.tls import check_pair, client_context, ensure_self_signed, generate_self_signed
from airlock.tls.certs import covers


def openssl_fingerprint(cert: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().split("=", 1)[1]


def refusal(cert: Path, key: Path, name: str | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        check_pair(cert, key, name)
    return str(caught.value)


def test_generated_pair_is_a_p256_server_certificate_for_every_name(pair: Pair):
    info = check_pair(pair.cert, pair.key, "gw.test")
    assert info.names == ["gw.test", "127.0.0.1"] and info.self_signed
    assert info.covers("127.0.0.1") and not info.covers("127.0.0.2")
    assert info.fingerprint == openssl_fingerprint(pair.cert)
    assert (info.not_after - info.not_before).days == 825
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]  # an IP SAN, not DNS
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert basic.critical and basic.value.ca is False
    assert usage.digital_signature and not usage.key_cert_sign and not usage.key_encipherment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert pair.key.stat().st_mode & 0o777 == 0o600


def openssl_text(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-text", "-noout"], check=True,
                          capture_output=True, text=True).stdout


def test_openssl_reads_the_generated_certificate_as_generated(pair: Pair):
    text = openssl_text(pair.cert)
    assert "DNS:gw.test, IP Address:127.0.0.1" in text
    assert "CA:FALSE" in text and "Digital Signature" in text and "TLS Web Server Authentication" in text


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_openssl_made_pair_is_accepted(tmp_path: Path, key_type: str):
    p = openssl_pair(tmp_path, "DNS:openssl.test,IP:10.1.2.3", key_type=key_type)
    info = check_pair(p.cert, p.key, "10.1.2.3")
    assert info.names == ["openssl.test", "10.1.2.3"] and info.self_signed
    assert info.subject == "CN=openssl.test"
    assert info.fingerprint == openssl_fingerprint(p.cert)


def test_key_of_another_certificate_is_refused_naming_both_files(tmp_path: Path, pair: Pair):
    other = openssl_pair(tmp_path, "DNS:gw.test")
    said = refusal(pair.cert, other.key)
    assert str(pair.cert) in said and str(other.key) in said and "key of another certificate" in said


def test_certificate_for_another_name_says_which_names_it_covers(pair: Pair):
    said = refusal(pair.cert, pair.key, "billing.internal")
    assert str(pair.cert) in said and "not for billing.internal: it covers gw.test, 127.0.0.1" in said


def test_expired_certificate_is_refused_with_its_date(tmp_path: Path):
    p = make_cert(tmp_path, ["gw.test"], not_before=past(400), not_after=past(35))
    said = refusal(p.cert, p.key)
    assert str(p.cert) in said and f"expired on {past(35):%Y-%m-%d}" in said


def test_certificate_not_valid_yet_is_refused(tmp_path: Path):
    soon = datetime.now(UTC) + timedelta(days=2)
    p = make_cert(tmp_path, ["gw.test"], not_before=soon, not_after=soon + timedelta(days=30))
    assert "is not valid yet" in refusal(p.cert, p.key)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
def test_key_readable_by_group_or_others_is_refused_with_its_mode(pair: Pair, mode: int):
    pair.key.chmod(mode)
    said = refusal(pair.cert, pair.key)
    assert f"the private key {pair.key} has mode {mode:04o}" in said and "0600 or 0400" in said


def test_read_only_key_is_accepted(pair: Pair):
    pair.key.chmod(0o400)
    check_pair(pair.cert, pair.key)


def test_every_problem_is_reported_at_once(tmp_path: Path, pair: Pair):
    expired = make_cert(tmp_path, ["old.test"], not_before=past(90), not_after=past(1))
    expired.key.chmod(0o644)
    with pytest.raises(InvalidInput) as caught:
        check_pair(expired.cert, pair.key, "gw.test")
    problems = " | ".join(caught.value.problems)
    assert "expired" in problems and "not for gw.test" in problems and "key of another certificate" in problems
    pair.key.chmod(0o644)
    assert "mode 0644" in refusal(expired.cert, pair.key)


@pytest.mark.parametrize("garbage", [b"", b"hello\n", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"])
def test_garbage_certificate_is_refused_naming_the_file(pair: Pair, garbage: bytes):
    pair.cert.write_bytes(garbage)
    said = refusal(pair.cert, pair.key)
    assert f"the certificate {pair.cert} is not a PEM certificate" in said


def test_garbage_key_and_a_certificate_in_the_key_file_are_refused(pair: Pair):
    key = pair.key
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert f"the private key {key} is not a PEM private key" in refusal(pair.cert, key)
    key.write_bytes(pair.cert.read_bytes())
    assert f"the private key {key} is not a PEM private key" in refusal(pair.cert, key)


def test_missing_files_are_named(tmp_path: Path, pair: Pair):
    assert f"cannot read the certificate {tmp_path / 'none.crt'}" in refusal(tmp_path / "none.crt", pair.key)
    assert f"cannot read the private key {tmp_path / 'none.key'}" in refusal(pair.cert, tmp_path / "none.key")


def test_encrypted_key_is_refused(pair: Pair):
    key = serialization.load_pem_private_key(pair.key.read_bytes(), None)
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"secret")))
    assert f"the private key {pair.key} is encrypted" in refusal(pair.cert, pair.key)


def test_certificate_without_subject_alt_name_is_refused(tmp_path: Path):
    p = openssl_pair(tmp_path, "DNS:x.test")
    key = serialization.load_pem_private_key(p.key.read_bytes(), None)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.test")])
    bare = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(past(1)).not_valid_after(past(-30)).sign(key, hashes.SHA256()))
    p.cert.write_bytes(bare.public_bytes(serialization.Encoding.PEM))
    assert "has no subjectAltName" in refusal(p.cert, p.key, "gw.test")


def test_names_are_matched_as_tls_clients_match_them():
    names = ["*.svc.internal", "gw.test", "10.0.0.1", "fd00::1"]
    assert covers(names, "api.svc.internal") and covers(names, "GW.TEST") and covers(names, "gw.test.")
    assert not covers(names, "svc.internal") and not covers(names, "a.b.svc.internal")
    assert covers(names, "fd00:0::1") and covers(names, "[fd00::1]") and not covers(names, "10.0.0.2")
    assert not covers(["10.0.0.1"], "gw.test") and not covers(["gw.test"], "10.0.0.1")


def test_ensure_keeps_a_valid_pair_and_replaces_one_that_is_not(tmp_path: Path):
    cert, key = tmp_path / "tls" / "gw.crt", tmp_path / "tls" / "gw.key"
    first = ensure_self_signed(cert, key, ["gw.test", "127.0.0.1"])
    assert first.changed and key.stat().st_mode & 0o777 == 0o600
    stamp = cert.stat().st_mtime_ns, key.stat().st_mtime_ns
    again = ensure_self_signed(cert, key, ["127.0.0.1", "gw.test"])
    assert not again.changed and again.info.fingerprint == first.info.fingerprint
    assert (cert.stat().st_mtime_ns, key.stat().st_mtime_ns) == stamp  # not even rewritten
    wider = ensure_self_signed(cert, key, ["gw.test", "api.test"])
    assert wider.changed and "does not cover api.test" in wider.why and wider.info.names == ["gw.test", "api.test"]
    key.chmod(0o644)
    loose = ensure_self_signed(cert, key, ["gw.test"])
    assert loose.changed and "mode 0644" in loose.why and key.stat().st_mode & 0o777 == 0o600
    expired = make_cert(tmp_path, ["gw.test"], not_before=past(10), not_after=past(1))
    renewed = ensure_self_signed(expired.cert, expired.key, ["gw.test"])
    assert renewed.changed and "expired" in renewed.why
    check_pair(expired.cert, expired.key, "gw.test")


def test_bad_names_and_days_are_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(InvalidInput) as caught:
        generate_self_signed(tmp_path / "c", tmp_path / "k", ["ok.test", "bad name", "-x.test", "a..b"])
    assert len(caught.value.problems) == 3 and "'bad name'" in str(caught.value)
    with pytest.raises(InvalidInput, match="at least one name"):
        generate_self_signed(tmp_path / "c", tmp_path / "k", [])
    with pytest.raises(InvalidInput, match="at least 1 day"):
        generate_self_signed(tmp_path / "c", tmp_path / "k", ["ok.test"], days=0)
    assert list(tmp_path.iterdir()) == []


def test_settings_need_both_halves_of_the_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(InvalidInput, match="AIRLOCK_TLS_CERT is set but AIRLOCK_TLS_KEY is not"):
        Settings(home=tmp_path, tls_cert=tmp_path / "c")
    monkeypatch.setenv("AIRLOCK_TLS_KEY", str(tmp_path / "k"))
    with pytest.raises(InvalidInput, match="AIRLOCK_TLS_KEY is set but AIRLOCK_TLS_CERT is not"):
        Settings(home=tmp_path)
    monkeypatch.setenv("AIRLOCK_TLS_CERT", str(tmp_path / "c"))
    assert Settings(home=tmp_path, gateway_port=8443).gateway_url == "https://127.0.0.1:8443"
    assert Settings(home=tmp_path, tls_cert=None, tls_key=None).gateway_url == "http://127.0.0.1:8080"


def test_client_context_trusts_a_certificate_an_unknown_ca_issued(tmp_path: Path):
    """An internal CA that is not in the system store: the configured chain is the anchor."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(past(1)).not_valid_after(past(-30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.site")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(past(1)).not_valid_after(past(-30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("gw.site")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain, key = tmp_path / "chain.crt", tmp_path / "leaf.key"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key.chmod(0o600)
    info = check_pair(chain, key, "gw.site")
    assert not info.self_signed
    assert handshake(chain, key, client_context(chain), "gw.site") == "ok"
    assert "CERTIFICATE_VERIFY_FAILED" in handshake(chain, key, ssl.create_default_context(), "gw.site")


def handshake(cert: Path, key: Path, client: ssl.SSLContext, name: str) -> str:
    """One TLS handshake against a real server socket holding `cert`: "ok" or the client's error."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client.wrap_socket(raw, server_hostname=name):
                    return "ok"
        except ssl.SSLError as exc:
            return str(exc)
        finally:
            thread.join(timeout=5)
