"""The console's settings (`PJ_OIDC_*`, `PJ_CONSOLE_*`): its own class, so the gateway's stays as it is."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    """Sign-in of the console through an OpenID Connect provider; without an issuer the console offers
    only the development role picker (PJ_ENV=dev) and says that sign-in is not configured."""

    model_config = SettingsConfigDict(env_prefix="PJ_", extra="ignore")

    # The provider's issuer URL; its /.well-known/openid-configuration is read by the gateway.
    oidc_issuer: str | None = None
    oidc_client_id: str = "pj-console"
    # Only for a confidential client: the gateway adds it when it exchanges codes, the browser never sees it.
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid profile offline_access"
    # Sent as the `resource` parameter (RFC 8707) when the provider needs one to issue API tokens.
    oidc_resource: str | None = None
    # How many recent events a gateway keeps to replay to a reconnecting console (Last-Event-ID).
    console_event_history: int = 1000
