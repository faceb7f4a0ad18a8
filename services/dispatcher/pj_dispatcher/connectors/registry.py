"""Which connectors this dispatcher has, built from its settings and one shared HTTP client."""

import httpx

from ..settings import DispatcherSettings
from .base import Connector, StepContext, StepOutput, permanent
from .webhook import WebhookConnector


class PendingConnector:
    """A connector of the catalog whose client is not in this version: it checks its settings and
    then fails the step plainly, never pretending the side effect happened."""

    def __init__(self, name: str, required: dict[str, object]) -> None:
        self.name = name
        self._required = required

    def missing_settings(self) -> list[str]:
        return [key for key, value in self._required.items() if not value]

    async def run(self, ctx: StepContext) -> StepOutput:
        raise permanent("connector_unavailable",
                        f"connector {self.name!r} ({ctx.step.operation}) is not available in this version")


def build_connectors(settings: DispatcherSettings, client: httpx.AsyncClient) -> dict[str, Connector]:
    s = settings
    return {
        "webhook": WebhookConnector(client, s.webhook_url, s.webhook_secret, s.webhook_allow_private),
        "github": PendingConnector("github", {"GITHUB_DISPATCH_TOKEN": s.github_token}),
        "sharepoint": PendingConnector("sharepoint", {
            "MS_TENANT_ID": s.ms_tenant_id, "MS_CLIENT_ID": s.ms_client_id, "MS_CLIENT_SECRET": s.ms_client_secret}),
        "slack": PendingConnector("slack", {"SLACK_BOT_TOKEN": s.slack_bot_token}),
    }
