"""A local SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it accepts.

`start_smtp_server()` serves on a free port in aiosmtpd's own thread; `refuse_next` makes it answer the
next N transactions with a temporary failure (451), as a server under load does. With `login`, it
offers AUTH LOGIN/PLAIN without TLS (a test server on the loopback only) and accepts only those
credentials. With `starttls`, it requires STARTTLS before MAIL, with a certificate for 127.0.0.1 made
for the run (`state.ca_file` verifies it).
"""

import datetime
import ipaddress
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.system import free_port


@dataclass
class SmtpState:
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)  # each message's RCPT TO addresses
    refuse: int = 0
    port: int = 0  # where it listens
    logins: list[str] = field(default_factory=list)  # users that logged in
    ca_file: Path | None = None  # with starttls: the certificate to trust
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse_next(self, n: int = 1) -> None:
        with self.lock:
            self.refuse += n

    def to(self, address: str) -> list[EmailMessage]:
        """The messages delivered to `address`, oldest first."""
        with self.lock:
            return [m for m, rcpt in zip(self.messages, self.recipients, strict=True) if address in rcpt]


class _Handler:
    def __init__(self, state: SmtpState) -> None:
        self._state = state

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        with self._state.lock:
            if self._state.refuse > 0:
                self._state.refuse -= 1
                return "451 4.3.0 try again later"
            content = envelope.original_content or b""
            self._state.messages.append(message_from_bytes(content, _class=EmailMessage, policy=policy.default))
            self._state.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


class _Session(Session):
    """aiosmtpd sets the deprecated `login_data` itself after every successful AUTH, and its warning would
    fail the session under pytest's `filterwarnings = error`: the same attribute, without the warning."""

    @property  # type: ignore[override]
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _SMTP(SMTP):
    def _create_session(self) -> Session:
        return _Session(self.loop)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


def _authenticator(login: tuple[str, str], state: SmtpState) -> Any:
    def check(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == login
        if ok:
            with state.lock:
                state.logins.append(login[0])
        return AuthResult(success=ok)
    return check


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "smtp.crt", directory / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def start_smtp_server(login: tuple[str, str] | None = None, *,
                      starttls: bool = False) -> tuple[Controller, SmtpState]:
    state = SmtpState()
    options: dict[str, Any] = {}
    if starttls:
        cert_file, key_file = _certificate(Path(tempfile.mkdtemp(prefix="pj-smtp-")))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        options = {"tls_context": context, "require_starttls": True}
        state.ca_file = cert_file
    if login is not None:
        # Offered, not required: aiosmtpd warns on every connection when AUTH is required without TLS.
        options |= {"authenticator": _authenticator(login, state), "auth_require_tls": False}
    controller = _Controller(_Handler(state), hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    state.port = controller.port
    return controller, state


def stop_smtp_server(controller: Controller, state: SmtpState) -> None:
    """Stop serving and remove the run's certificate, if one was made."""
    controller.stop()
    if state.ca_file is not None:
        shutil.rmtree(state.ca_file.parent, ignore_errors=True)
