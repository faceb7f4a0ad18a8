"""Which connectors this dispatcher has, built from its settings and one shared HTTP client."""

import httpx

from pj_common.connectors import CONNECTOR_OPERATIONS

from ..settings import DispatcherSettings
from .base import ApiConnector, Connector
from .github import GitHubConnector
from .sharepoint import SharePointConnector
from .slack import SlackConnector
from .webhook import WebhookConnector


def build_connectors(settings: DispatcherSettings, client: httpx.AsyncClient) -> dict[str, Connector]:
    """One connector of each kind the catalog may name, each with exactly the catalog's operations."""
    s = settings
    connectors: list[ApiConnector] = [
        WebhookConnector(client, url=s.webhook_url, secret=s.webhook_secret, allow_private=s.webhook_allow_private),
        GitHubConnector(client, api_url=s.github_api_url, token=s.github_token),
        SharePointConnector(client, graph_url=s.graph_api_url, login_url=s.graph_login_url,
                            tenant_id=s.ms_tenant_id, client_id=s.ms_client_id, client_secret=s.ms_client_secret),
        SlackConnector(client, api_url=s.slack_api_url, token=s.slack_bot_token),
    ]
    for connector in connectors:
        check_operations(connector)
    return {c.name: c for c in connectors}


def check_operations(connector: ApiConnector) -> None:
    """Refuse a connector whose operations differ from the catalog's list
    (`pj_common.connectors.CONNECTOR_OPERATIONS`, the one place they are named)."""
    expected = CONNECTOR_OPERATIONS.get(connector.name)
    provided = frozenset(connector.operations())
    if provided != expected:
        raise RuntimeError(f"connector {connector.name!r} provides operations {sorted(provided)}, but the catalog "
                           f"lists {sorted(expected or ())}: pj_common.connectors.CONNECTOR_OPERATIONS and the "
                           "connector must agree")
