"""Send an alert as an e-mail over SMTP (smtplib), with STARTTLS and a login when configured."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from mlplatform.alerts.errors import DeliveryError, NotConfiguredError


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    starttls: bool = True
    user: str | None = None
    password: str | None = None


def send_email(server: SmtpServer, subject: str, body: str, timeout: float) -> None:
    """One SMTP session: connect, STARTTLS if asked, log in if a user is set, send one message."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = server.sender
    message["To"] = ", ".join(server.to)
    message.set_content(body)
    try:
        with smtplib.SMTP(server.host, server.port, timeout=timeout) as smtp:
            if server.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if server.user is not None:
                smtp.login(server.user, server.password or "")
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as error:  # the same login fails again: no retry
        raise NotConfiguredError(
            f"SMTP {server.host}:{server.port} refused the login: {error.smtp_code}"
        ) from None
    except UnicodeEncodeError:  # smtplib sends the login as ASCII; the message would show a character of it
        raise NotConfiguredError(
            f"SMTP {server.host}:{server.port}: the user or password is not ASCII"
        ) from None
    except (smtplib.SMTPException, OSError) as error:
        raise DeliveryError(f"SMTP {server.host}:{server.port}: {type(error).__name__}: {error}") from None
