"""Gateway settings (`PJ_*`)."""

from pydantic import SecretStr

from pj_common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    metrics_token: SecretStr | None = None
    # How long one command may take before the gateway answers 504 (outcome unknown).
    rpc_timeout_s: float = 5.0
    # How long POST /dispatch waits for the plan to finish before answering 202 (still running).
    dispatch_wait_s: float = 10.0
    health_timeout_s: float = 1.5
