"""Real receivers of alerts on 127.0.0.1 and free ports, started and stopped by the tests' fixtures:
an HTTP server that records each webhook POST (and can answer 500), and an aiosmtpd SMTP server that
records each e-mail (optionally with a login)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from platform_tests.servers import free_port


def self_signed_tls(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and the certificate's file
    (for a client to trust it: SSL_CERT_FILE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@dataclass
class WebhookReceiver:
    port: int
    payloads: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0  # every POST, answered 2xx or not
    failures_left: int = 0  # answer this many POSTs with HTTP 500 first (-1: always)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts"

    def texts(self) -> list[str]:
        return [payload["text"] for payload in self.payloads]


@contextmanager
def webhook_receiver(port: int | None = None, failures: int = 0) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(port or free_port(), failures_left=failures)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver.requests += 1
            if receiver.failures_left:
                receiver.failures_left -= 1 if receiver.failures_left > 0 else 0
                self.send_response(500)
                self.end_headers()
                return
            receiver.payloads.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class SmtpReceiver:
    port: int
    messages: list[Message] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.messages]

    def bodies(self) -> list[str]:
        """Each body with `\n` line ends (SMTP sends `\r\n`)."""
        payloads = [m.get_payload(decode=True) for m in self.messages]
        return [p.decode().replace("\r\n", "\n") for p in payloads]  # type: ignore[union-attr]


class _Handler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.receiver.messages.append(message_from_bytes(envelope.original_content))
        return "250 OK"


@contextmanager
def smtp_receiver(
    port: int | None = None, login: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[SmtpReceiver]:
    """An SMTP server; with `login`, it accepts only that user and password (AUTH without TLS, which
    only a test on 127.0.0.1 may allow); with `tls`, it requires STARTTLS with that context."""
    receiver = SmtpReceiver(port or free_port())

    def authenticate(
        server: object, session: object, envelope: object, mechanism: str, auth: Any
    ) -> AuthResult:
        ok = isinstance(auth, LoginPassword) and login is not None
        ok = ok and (auth.login.decode(), auth.password.decode()) == login
        if ok:
            receiver.logins.append(auth.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    options: dict[str, Any] = {}
    if login is not None:
        options = {"authenticator": authenticate, "auth_required": True, "auth_require_tls": False}
    if tls is not None:
        options |= {"tls_context": tls, "require_starttls": True}
    controller = Controller(_Handler(receiver), hostname="127.0.0.1", port=receiver.port, **options)
    controller.start()
    try:
        yield receiver
    finally:
        controller.stop()


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
