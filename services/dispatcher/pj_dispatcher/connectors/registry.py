"""Which connectors this dispatcher has, built from its settings and one shared HTTP client."""

import httpx

from ..settings import DispatcherSettings
from .base import Connector
from .github import GitHubConnector
from .sharepoint import SharePointConnector
from .slack import SlackConnector
from .webhook import WebhookConnector


def build_connectors(settings: DispatcherSettings, client: httpx.AsyncClient) -> dict[str, Connector]:
    s = settings
    connectors: list[Connector] = [
        WebhookConnector(client, s.webhook_url, s.webhook_secret, s.webhook_allow_private),
        GitHubConnector(client, s.github_api_url, s.github_token),
        SharePointConnector(client, s.graph_api_url, s.graph_login_url, s.ms_tenant_id, s.ms_client_id,
                            s.ms_client_secret),
        SlackConnector(client, s.slack_api_url, s.slack_bot_token),
    ]
    return {c.name: c for c in connectors}
