"""Gateway settings (`PJ_*`)."""

from pydantic import AliasChoices, Field, SecretStr

from pj_common.settings import CommonSettings


class GatewaySettings(CommonSettings):
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
