"""Dispatcher settings: `PJ_*`, plus the connector credentials under their conventional names."""

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr

from pj_common.settings import DispatchSigningSettings


class DispatcherSettings(DispatchSigningSettings):
    # Dispatch orders this process runs at once: its prefetch on the dispatch queue. A plan's steps run
    # one after another, so this is also the most steps running at once. An order waiting for a rate
    # limit holds its place; the orders beyond this wait in the queue for any dispatcher.
    concurrency: int = Field(default=16, ge=1, validation_alias=AliasChoices("PJ_DISPATCHER_CONCURRENCY"))
    max_attempts: int = Field(default=4, ge=1, validation_alias=AliasChoices("PJ_CONNECTOR_MAX_ATTEMPTS"))
    # Per-connector limits over max_attempts, as JSON: PJ_CONNECTOR_ATTEMPTS='{"github": 6, "slack": 3}'.
    connector_attempts: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, validation_alias=AliasChoices("PJ_CONNECTOR_ATTEMPTS"))
    retry_base_s: float = Field(default=0.5, ge=0, validation_alias=AliasChoices("PJ_CONNECTOR_RETRY_BASE_S"))
    retry_max_s: float = Field(default=30.0, ge=0, validation_alias=AliasChoices("PJ_CONNECTOR_RETRY_MAX_S"))
    # The longest a step waits when an API says when it will accept the request again (Retry-After,
    # X-RateLimit-Reset); a longer wait fails the step at once as `rate_limited`. A wait longer than
    # retry_max_s is reported first, which renews the dispatch lease; keep this below approvals'
    # PJ_DISPATCH_LEASE_S (900 s) all the same.
    rate_limit_max_wait_s: float = Field(default=300.0, ge=0,
                                         validation_alias=AliasChoices("PJ_RATE_LIMIT_MAX_WAIT_S"))
    # How long an order waits for approvals to confirm its plan before it is retried later.
    plan_fetch_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    # On SIGTERM, how long running orders may take to finish before the process disconnects anyway.
    drain_s: float = Field(default=60.0, ge=0, validation_alias=AliasChoices("PJ_DISPATCHER_DRAIN_S"))
    # Serve this process's /metrics on this port (0: off); each dispatcher needs its own port.
    dispatcher_metrics_port: int = 0
    dispatcher_metrics_host: str = "127.0.0.1"
    read_timeout_s: float = 30.0

    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False

    github_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("GITHUB_DISPATCH_TOKEN"))
    github_api_url: str = "https://api.github.com"
    ms_tenant_id: str | None = Field(default=None, validation_alias=AliasChoices("MS_TENANT_ID"))
    ms_client_id: str | None = Field(default=None, validation_alias=AliasChoices("MS_CLIENT_ID"))
    ms_client_secret: SecretStr | None = Field(default=None, validation_alias=AliasChoices("MS_CLIENT_SECRET"))
    graph_api_url: str = "https://graph.microsoft.com/v1.0"
    graph_login_url: str = "https://login.microsoftonline.com"
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_api_url: str = "https://slack.com/api"
