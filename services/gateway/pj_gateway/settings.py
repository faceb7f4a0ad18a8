"""Gateway settings (`PJ_*`)."""

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from pj_common.principal import Role
from pj_common.settings import CommonSettings
from pj_common.token_settings import TokenSettings


class GatewaySettings(TokenSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # The runbook calls it METRICS_TOKEN: an operator following it must not leave /metrics open.
    # Either name may also come from a file (`PJ_METRICS_TOKEN_FILE`, `METRICS_TOKEN_FILE`).
    metrics_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PJ_METRICS_TOKEN", "METRICS_TOKEN"))
    # How long one command may take before the gateway answers 504 (outcome unknown).
    rpc_timeout_s: float = 5.0
    # How long POST /dispatch waits for the plan to finish before answering 202 (still running).
    dispatch_wait_s: float = 10.0
    health_timeout_s: float = 1.5

    # HTTP limits (docs/security.md): every one refuses with the error envelope, never a 500.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    max_url_bytes: int = Field(default=8192, ge=256)
    max_header_bytes: int = Field(default=16384, ge=1024)
    max_json_depth: int = Field(default=32, ge=2)
    max_json_string: int = Field(default=65536, ge=1)

    # Rate limits: executes and decisions per (tenant, sub), authentication failures per client address.
    rate_limit_per_min: int = Field(default=60, ge=1)
    auth_failures_per_min: int = Field(default=20, ge=1)
    # Shared rate-limit budgets across gateway instances; unset: each gateway counts in memory.
    redis_url: SecretStr | None = None

    # Browser origins allowed to call the API (comma-separated); empty: no CORS headers at all.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, origins: list[str]) -> list[str]:
        # An allow-list, never "anything": a wildcard (or `null`) would let any page read the API.
        for origin in origins:
            if origin in ("*", "null") or not origin.startswith(("https://", "http://")):
                raise ValueError(f"PJ_CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port])")
        return origins


class ConsoleSettings(CommonSettings):
    """The web console's sign-in (`PJ_OIDC_*`) and live view; read by the console's routes only.

    Without an issuer the console offers only the development role picker (PJ_ENV=dev with a secret)."""

    # The OpenID provider's issuer URL; the gateway reads its /.well-known/openid-configuration.
    oidc_issuer: str | None = None
    oidc_client_id: str = "pj-console"
    # Only for a confidential client: the gateway adds it when it redeems codes, the browser never sees it.
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid profile offline_access"
    # Sent as the `resource` parameter (RFC 8707) to providers that need it to issue tokens for the API.
    oidc_resource: str | None = None
    # Recent events each gateway keeps to replay to a reconnecting console (Last-Event-ID).
    console_event_history: int = Field(default=1000, ge=1)


class SlackIdentity(BaseModel):
    """Who a Slack user is in this system: the subject, role and tenant a token of theirs would carry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sub: str = Field(min_length=1, max_length=256)
    role: Role
    tenant: str = Field(min_length=1, max_length=256)


class SlackSettings(CommonSettings):
    """Decisions from Slack's buttons (POST /api/slack/interactions); read by that route only."""

    # The Slack app's Signing Secret: every interaction request must carry its signature. Unset: every
    # interaction is refused (401).
    slack_signing_secret: SecretStr | None = None
    # Slack user id (U…) or email -> {"sub", "role", "tenant"}, as JSON. A user id is looked up first; else
    # the user's email from users.info. A Slack user in neither may not decide.
    slack_user_map: dict[str, SlackIdentity] = Field(default_factory=dict)
    # The token of the gateway's service identity (role `service`, a `decide_on_behalf` grant in
    # PJ_SERVICE_PRINCIPALS), e.g. from the identity provider's client-credentials grant. Unset: minted
    # per decision with PJ_JWT_SECRET when the gateway has it (HS256 set-ups), as PJ_SLACK_SERVICE_SUBJECT.
    slack_service_token: SecretStr | None = None
    slack_service_subject: str = Field(default="pj-slack", min_length=1)
    # The same bot token and API base URL as the notifier's (users.info, views.open, chat.postEphemeral).
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_api_url: str = "https://slack.com/api"
    connector_allow_http: bool = False

    @field_validator("slack_user_map")
    @classmethod
    def _emails_ignore_case(cls, users: dict[str, SlackIdentity]) -> dict[str, SlackIdentity]:
        return {key.strip().lower() if "@" in key else key.strip(): who for key, who in users.items()}

    @model_validator(mode="after")
    def _slack_over_https(self) -> "SlackSettings":
        scheme = urlsplit(self.slack_api_url).scheme
        if scheme != "https" and not (scheme == "http" and (self.env == "dev" or self.connector_allow_http)):
            raise ValueError("PJ_SLACK_API_URL must be an https:// URL outside dev (PJ_ENV=prod); http:// is "
                             "accepted only with PJ_ENV=dev or PJ_CONNECTOR_ALLOW_HTTP=1, for local testing")
        return self
