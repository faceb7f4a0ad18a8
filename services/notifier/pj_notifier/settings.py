"""Notifier settings: `PJ_*`, plus the Slack bot token under the name the dispatcher reads it by."""

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator

from pj_common.settings import CommonSettings


class NotifierSettings(CommonSettings):
    # Its own tables (notifier_*) live in the approvals database; it never reads approvals' tables.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/pj"
    # The approvals catalog: the notifier reads each action's stages and plan, and the tenants'
    # `notifications` settings from it. Unset: nothing is configured, so nothing is sent.
    catalog: Path | None = None
    # Approvals' default time to live of a pending approval, to say in a message when it expires
    # (an action's own pending_ttl in the catalog wins).
    pending_ttl_s: float = 48 * 3600
    # Approvals' default dispatch window: an approved approval must be dispatched within it.
    dispatch_window_s: float = 24 * 3600
    # Messages link to <console_url>/console/approvals/<id>.
    console_url: str = "http://127.0.0.1:8080"
    # Events handled at once by this process (its prefetch on the notifier queue).
    notifier_prefetch: int = Field(default=16, ge=1)
    # How often pending approvals are checked for a due reminder or escalation.
    reminder_scan_interval_s: float = Field(default=30.0, gt=0)
    # Per request to Slack or a webhook, and per SMTP session.
    notifier_http_timeout_s: float = Field(default=10.0, gt=0)
    # How long the notifier keeps what it knows of an approval that ended (its events, deliveries and
    # Slack messages): a message is no longer updated after that. Purged by the reminder scan.
    notifier_retention_s: float = Field(default=30 * 86400, gt=0)
    notifier_metrics_port: int = 0
    notifier_metrics_host: str = "127.0.0.1"
    notifier_db_pool_max: int = Field(default=8, ge=2)
    # Slack: the same bot token and API base URL as the dispatcher's Slack connector.
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_api_url: str = "https://slack.com/api"
    # As for the dispatcher's connectors: the bot token never travels over plain http outside dev.
    connector_allow_http: bool = False
    # Email over SMTP: STARTTLS on a plain port (587), or implicit TLS (465) with PJ_SMTP_TLS.
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_tls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "approvals@localhost"
    # CA certificates (PEM) to verify the SMTP server with, for a server whose certificate a private CA
    # signed; unset: the system's CAs.
    smtp_ca_file: Path | None = None
    # Outgoing notification webhooks are signed like the webhook connector's (X-PJ-Signature).
    notifier_webhook_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _slack_over_https(self) -> "NotifierSettings":
        scheme = urlsplit(self.slack_api_url).scheme
        if scheme != "https" and not (scheme == "http" and (self.env == "dev" or self.connector_allow_http)):
            raise ValueError("PJ_SLACK_API_URL must be an https:// URL outside dev (PJ_ENV=prod); http:// is "
                             "accepted only with PJ_ENV=dev or PJ_CONNECTOR_ALLOW_HTTP=1, for local testing")
        return self
