"""Email over SMTP (aiosmtplib): STARTTLS on a submission port, or implicit TLS, with optional login."""

from email.message import EmailMessage

import aiosmtplib

from ..settings import NotifierSettings
from . import DeliveryFailed


class EmailSender:
    def __init__(self, settings: NotifierSettings) -> None:
        self._settings = settings

    async def send(self, to: str, *, subject: str, body: str, message_id: str) -> None:
        """Send one plain-text email to `to`; `message_id` names it (the same notice, the same id)."""
        s = self._settings
        if not s.smtp_host:
            raise DeliveryFailed("PJ_SMTP_HOST is not set", permanent=True)
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = f"<{message_id}@pj-notifier>"
        message.set_content(body)
        try:
            await aiosmtplib.send(
                message, hostname=s.smtp_host, port=s.smtp_port, use_tls=s.smtp_tls,
                start_tls=s.smtp_starttls and not s.smtp_tls, username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                cert_bundle=str(s.smtp_ca_file) if s.smtp_ca_file else None, timeout=s.notifier_http_timeout_s)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryFailed(f"smtp: recipient refused: {exc}", permanent=True) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryFailed(f"smtp: authentication failed: {exc}", permanent=True) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"smtp: {type(exc).__name__}: {exc}", permanent=False) from exc
