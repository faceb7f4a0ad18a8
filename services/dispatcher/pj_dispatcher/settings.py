"""Dispatcher settings: `PJ_*`, plus the connector credentials under their conventional names."""

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator

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
    # X-RateLimit-Reset); a longer wait fails the step at once as `rate_limited`. The lease renewals
    # go on during the wait, so it may be longer than approvals' lease.
    rate_limit_max_wait_s: float = Field(default=300.0, ge=0,
                                         validation_alias=AliasChoices("PJ_RATE_LIMIT_MAX_WAIT_S"))
    # How long an order waits for approvals to confirm its plan (or renew its lease) before it is
    # retried later (or the renewal counts as unanswered).
    plan_fetch_timeout_s: float = 5.0
    # A step starts only while the claim's lease holds for longer than this: it covers the clock skew
    # between approvals and this host, and the time a step takes to start.
    lease_margin_s: float = Field(default=5.0, ge=0, validation_alias=AliasChoices("PJ_LEASE_MARGIN_S"))
    # How often a running order's lease is renewed (renew_lease); well below approvals' lease (60 s),
    # so a renewal or two may go unanswered without the lease running out.
    lease_renew_s: float = Field(default=15.0, gt=0, validation_alias=AliasChoices("PJ_LEASE_RENEW_S"))
    # The longest one attempt at a step may take, from the request to the last byte of the answer.
    # Past it the attempt's outcome is unknown (the request may have had its effect) and it is retried
    # like a timeout: the connector looks for its earlier effect first.
    step_deadline_s: float = Field(default=120.0, gt=0, validation_alias=AliasChoices("PJ_STEP_DEADLINE_S"))
    # The longest one delivery of an order is held unacked. RabbitMQ closes the channel of a delivery
    # unacked for longer than its consumer_timeout (30 min by default) and redelivers it mid-run; so
    # a plan still running at this point hands its order back to the queue between two attempts (the
    # redelivery resumes after the checkpointed steps). Keep it below the broker's consumer_timeout.
    order_hold_max_s: float = Field(default=1500.0, gt=0, validation_alias=AliasChoices("PJ_ORDER_HOLD_MAX_S"))
    connect_timeout_s: float = 5.0
    # On SIGTERM, how long running orders may take to finish before the process disconnects anyway.
    drain_s: float = Field(default=60.0, ge=0, validation_alias=AliasChoices("PJ_DISPATCHER_DRAIN_S"))
    # Serve this process's /metrics on this port (0: off); each dispatcher needs its own port.
    dispatcher_metrics_port: int = 0
    dispatcher_metrics_host: str = "127.0.0.1"
    # Per read of a connector's answer; the whole attempt is bounded by step_deadline_s.
    read_timeout_s: float = 30.0

    # Connector base URLs must be https outside dev. This lets a prod-like run (the end-to-end, chaos and
    # bench harnesses, docker compose's local sink) use http:// servers of its own: local testing only.
    connector_allow_http: bool = False

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

    @model_validator(mode="after")
    def _connector_urls_are_https_outside_dev(self) -> "DispatcherSettings":
        # A connector sends a token (or a signed body) to its base URL: over http anyone on the path reads it.
        allow_http = self.env == "dev" or self.connector_allow_http
        for env_name, url in (("PJ_WEBHOOK_URL", self.webhook_url), ("PJ_GITHUB_API_URL", self.github_api_url),
                              ("PJ_GRAPH_API_URL", self.graph_api_url), ("PJ_GRAPH_LOGIN_URL", self.graph_login_url),
                              ("PJ_SLACK_API_URL", self.slack_api_url)):
            if url is not None:
                check_connector_url(env_name, url, allow_http=allow_http)
        return self

    @model_validator(mode="after")
    def _a_delivery_fits_a_wait_and_an_attempt(self) -> "DispatcherSettings":
        # A fresh delivery must be able to wait out the longest accepted rate limit and then make one
        # attempt, or a rate-limited step would be handed back to the queue for good.
        if self.order_hold_max_s <= self.rate_limit_max_wait_s + self.step_deadline_s:
            raise ValueError("PJ_ORDER_HOLD_MAX_S must exceed PJ_RATE_LIMIT_MAX_WAIT_S + PJ_STEP_DEADLINE_S")
        return self


def check_connector_url(env_name: str, url: str, *, allow_http: bool) -> None:
    """Refuse a connector base URL that is not https (or http when allowed) with a host.

    The message names the setting, never the value: a URL may carry credentials."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise ValueError(f"{env_name} must be an https:// URL outside dev (PJ_ENV=prod); http:// is accepted "
                         "only with PJ_ENV=dev or PJ_CONNECTOR_ALLOW_HTTP=1, which are for local testing"
                         if parts.scheme == "http" else f"{env_name} must be an https:// URL")
    if not parts.hostname:
        raise ValueError(f"{env_name} must name a host")
