"""TLS: memring's ``tls_context=`` against memcached started with ``-Z``.

The tests make a throwaway self-signed certificate for 127.0.0.1.
memcached built without TLS support makes every test here skip, with the
reason. With ``-Z`` every listener of that memcached speaks TLS only.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from memring import Failover, MemringError, NodeUnavailable, Timeouts
from memring.sessions import SessionStore
from memring.tools.local import MemcachedProcess, find_memcached
from tests import faces
from tests.faces import both_faces

pytestmark = pytest.mark.integration

TIMEOUTS = Timeouts(connect=2.0, read=2.0)


def memcached_tls_support() -> str | None:
    """None if this memcached can do TLS, else why not."""
    binary = find_memcached()
    help_text = subprocess.run([binary, "-h"], capture_output=True, text=True,
                               timeout=10).stdout
    if "--enable-ssl" not in help_text:
        return f"{binary} was built without TLS support (no -Z/--enable-ssl in its -h)"
    return None


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key, as PEM files."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    reason = memcached_tls_support()
    if reason is not None:
        print(f"TLS tests skipped: {reason}")
        pytest.skip(reason)
    return make_certificate(tmp_path_factory.mktemp("tls"))


def tls_process(certificate: tuple[Path, Path], context: ssl.SSLContext) -> MemcachedProcess:
    """A memcached whose port speaks TLS only (its readiness check speaks TLS too)."""
    cert, key = certificate
    return MemcachedProcess(extra_args=["-Z", "-o", f"ssl_chain_cert={cert},ssl_key={key}"],
                            tls_context=context)


@pytest.fixture(scope="module")
def trusted(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """Verifies the server's certificate (and that it names 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(certificate[0]))
    assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
    return context


@pytest.fixture(scope="module")
def tls_servers(certificate: tuple[Path, Path], trusted: ssl.SSLContext) -> Iterator[list[str]]:
    """Two TLS-only memcached processes, as "host:port" strings."""
    procs = [tls_process(certificate, trusted) for _ in range(2)]
    try:
        for p in procs:
            p.start()
        yield [f"{p.host}:{p.port}" for p in procs]
    finally:
        for p in procs:
            p.kill()


@both_faces
def test_set_get_over_tls(tls_servers: list[str], trusted: ssl.SSLContext, face: str) -> None:
    with faces.make(face, tls_servers, tls_context=trusted, timeouts=TIMEOUTS) as mc:
        assert mc.set("tls:k", {"secret": "value"}, expire=60)
        assert mc.get("tls:k") == {"secret": "value"}
        assert mc.get_many(["tls:k", "tls:none"]) == {"tls:k": {"secret": "value"}}
        assert mc.delete("tls:k") and mc.get("tls:k") is None
        assert len(mc.stats()) == 2  # every node answered over TLS


@both_faces
def test_backup_client_and_sessions_over_tls(tls_servers: list[str],
                                              trusted: ssl.SSLContext, face: str) -> None:
    with faces.make(face, tls_servers, backup=True, tls_context=trusted,
                    timeouts=TIMEOUTS) as mc:
        store = SessionStore(mc, ttl=60)
        s = store.create({"user_id": 7})
        loaded = store.load(s.id)
        assert loaded is not None and loaded["user_id"] == 7
        assert len(mc.owners("session:" + s.id)) == 2


@both_faces
def test_plain_client_cannot_talk_to_the_tls_port(tls_servers: list[str], face: str) -> None:
    with faces.make(face, tls_servers[:1], failover=Failover("fail"), timeouts=TIMEOUTS) as mc, \
            pytest.raises(NodeUnavailable):
        mc.get("tls:k")


@both_faces
def test_untrusted_certificate_is_refused(tls_servers: list[str], face: str) -> None:
    untrusted = ssl.create_default_context()  # system CAs: our self-signed cert isn't there
    with faces.make(face, tls_servers[:1], tls_context=untrusted, failover=Failover("fail"),
                timeouts=TIMEOUTS) as mc, pytest.raises(NodeUnavailable) as info:
        mc.get("tls:k")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


@both_faces
def test_plain_client_with_failover_gets_a_clear_error(tls_servers: list[str], face: str) -> None:
    # Every node refuses plain text: failing over can't help, and the caller
    # gets a memring error quickly instead of a hang or a wrong answer.
    with faces.make(face, tls_servers, timeouts=TIMEOUTS) as mc, pytest.raises(MemringError):
        mc.set("tls:x", 1)
