"""cli/lean_import: aiohttp's client contexts made without parsing the CA bundle, and still able
to verify a server through the CA directory.

The certificates in tests/tls_certs are a test CA and a `localhost` server certificate it
signed, made once with `openssl req -x509 -newkey rsa:2048 -nodes -days 36500` (the CA) and
`openssl x509 -req -CA ca.pem` (the server, subjectAltName DNS:localhost, IP:127.0.0.1); the CA
directory's entry is named by `openssl x509 -hash` of the CA, as `c_rehash` names them.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvplugin.cli.lean_import import ca_directory_only

CERTS = Path(__file__).parent / "tls_certs"
CA_HASH = "911b9472"  # openssl x509 -hash -noout -in tests/tls_certs/ca.pem


@pytest.fixture
def system_cas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CA bundle and a CA directory holding only the test CA, as the system's defaults."""
    bundle, directory = tmp_path / "bundle.pem", tmp_path / "certs"
    shutil.copy(CERTS / "ca.pem", bundle)
    directory.mkdir()
    shutil.copy(CERTS / "ca.pem", directory / f"{CA_HASH}.0")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    return directory


@pytest.fixture
def tls_server() -> Iterator[int]:
    """A TLS server on 127.0.0.1 with the test CA's `localhost` certificate; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERTS / "server.pem", CERTS / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # accept() returns to look at `stop`
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def _greeting(context: ssl.SSLContext, port: int) -> bytes:
    with (socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        return tls.recv(5)


def test_contexts_made_meanwhile_load_no_certificate_up_front(system_cas: Path) -> None:
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 1  # the bundle, parsed
    with ca_directory_only():
        lean = ssl.create_default_context()
    assert lean.cert_store_stats()["x509_ca"] == 0


def test_they_still_verify_a_server_through_the_ca_directory(system_cas: Path,
                                                             tls_server: int) -> None:
    with ca_directory_only():
        lean = ssl.create_default_context()
    assert _greeting(lean, tls_server) == b"hello"
    assert lean.cert_store_stats()["x509_ca"] == 1  # looked up when it was needed


def test_an_unknown_server_is_still_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            tls_server: int) -> None:
    empty = tmp_path / "certs"
    empty.mkdir()
    monkeypatch.setenv("SSL_CERT_DIR", str(empty))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    with ca_directory_only():
        lean = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        _greeting(lean, tls_server)


def test_without_a_ca_directory_the_bundle_is_loaded_as_usual(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "bundle.pem"
    shutil.copy(CERTS / "ca.pem", bundle)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-directory"))
    with ca_directory_only():
        context = ssl.create_default_context()
    assert context.cert_store_stats()["x509_ca"] == 1


def test_the_standard_library_is_put_back_even_after_an_error(system_cas: Path) -> None:
    original = ssl.SSLContext.load_default_certs
    with pytest.raises(RuntimeError), ca_directory_only():
        assert ssl.SSLContext.load_default_certs is not original
        raise RuntimeError("import failed")
    assert ssl.SSLContext.load_default_certs is original


def test_the_daemon_imports_aiohttp_that_way() -> None:
    """A fresh interpreter, as `serve` starts: aiohttp's verified client context holds no
    parsed certificate, and the stdlib method is back afterwards."""
    code = ("import ssl\nfrom nvplugin.cli.lean_import import ca_directory_only\n"
            "original = ssl.SSLContext.load_default_certs\n"
            "with ca_directory_only():\n    from nvplugin.cli import serve\n"
            "from aiohttp import connector\n"
            "assert ssl.SSLContext.load_default_certs is original\n"
            "print(connector._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "0"
