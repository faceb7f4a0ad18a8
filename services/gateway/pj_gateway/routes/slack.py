"""POST /api/slack/interactions: Slack's interactivity Request URL (the Approve and Reject buttons and the
note's modal). Slack signs each request; an unsigned, mis-signed or stale one is 401 and nothing else
happens. The logic is in pj_gateway.slack."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter

from pj_common.errors import ErrorCode, GateError

from ..deps import State
from ..errors import correlation_id
from ..settings import SlackSettings
from ..slack import Answer, Outcome, SlackApi, SlackDecisions, parse_interaction, signature_problem
from ..state import GatewayState

# Slack gives up on an interaction after three seconds; a Web API call must not outlast that.
SLACK_HTTP_TIMEOUT_S = 2.5


@asynccontextmanager
async def slack_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The Slack settings, the HTTP client to Slack's Web API and the interactions' counter."""
    settings = SlackSettings()
    gateway: GatewayState = app.state.gateway
    interactions = Counter("pj_gateway_slack_interactions", "Slack interaction requests by outcome", ["outcome"],
                           registry=gateway.metrics.registry)
    async with httpx.AsyncClient(timeout=SLACK_HTTP_TIMEOUT_S, trust_env=False) as http:
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
        api = SlackApi(http, base_url=settings.slack_api_url, token=token)
        app.state.slack = SlackDecisions(settings, api, interactions=interactions)
        yield


async def get_slack(request: Request) -> SlackDecisions:
    return request.app.state.slack  # type: ignore[no-any-return]  # Starlette types app.state as Any


SlackDep = Annotated[SlackDecisions, Depends(get_slack)]

router = APIRouter(prefix="/api/slack", tags=["slack"], lifespan=slack_lifespan)


# Not in the OpenAPI document: Slack calls it, signed with the app's secret, not a client with a token.
@router.post("/interactions", include_in_schema=False)
async def interactions(request: Request, slack: SlackDep, state: State) -> Response:
    """Slack's interaction requests (form `payload=<JSON>`), signed with the app's signing secret."""
    try:
        answer = await _answer(request, slack, state)
    except GateError as exc:
        slack.interactions.labels(Outcome.UNAUTHORIZED if exc.code is ErrorCode.UNAUTHORIZED
                                  else Outcome.INVALID).inc()
        raise
    slack.interactions.labels(answer.outcome).inc()
    payload = answer.body()
    return Response(status_code=200) if payload is None else JSONResponse(payload)


async def _answer(request: Request, slack: SlackDecisions, state: GatewayState) -> Answer:
    body = await request.body()  # the exact bytes Slack signed
    secret = slack.settings.slack_signing_secret
    if secret is None:
        raise GateError(ErrorCode.UNAUTHORIZED, "Slack interactions are not configured (PJ_SLACK_SIGNING_SECRET)")
    problem = signature_problem(secret.get_secret_value(), body=body, now=time.time(),
                                timestamp=request.headers.get("X-Slack-Request-Timestamp"),
                                signature=request.headers.get("X-Slack-Signature"))
    if problem is not None:
        raise GateError(ErrorCode.UNAUTHORIZED, f"not a Slack request: {problem}")
    interaction = parse_interaction(body)
    if interaction is None:
        return Answer(Outcome.IGNORED)
    return await slack.act(interaction, state, correlation_id=correlation_id(request))
