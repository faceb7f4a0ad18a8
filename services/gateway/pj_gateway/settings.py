"""Gateway settings (`PJ_*`)."""

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

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
