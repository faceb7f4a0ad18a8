"""Who hears of a notice, on which channel: pure, from the tenant's notification settings.

A target's `recipient` is stable across retries and processes, since deliveries are recorded under
(event, channel, recipient): a Slack channel as `#<channel id>`, a person's Slack DM as `@<subject>`
(the user id is looked up when sending), an email address, a webhook URL.
"""

from dataclasses import dataclass

from .catalog import ActionInfo, Channel, Route
from .domain import Notice, Tracked


@dataclass(frozen=True, order=True)
class Target:
    channel: Channel
    recipient: str


def slack_dm(subject: str) -> str:
    return f"@{subject}"


def slack_channel(channel_id: str) -> str:
    return f"#{channel_id}"


def audience_of(notice: Notice, state: Tracked, *, action: ActionInfo, route: Route) -> tuple[str, ...]:
    """The subjects a notice is for: a stage's approvers (never the requester, who may not decide their
    own request), the requester, or the escalation group."""
    if notice.audience == "requester":
        return (state.requester,) if state.requester else ()
    if notice.audience == "escalation":
        return route.escalation_group()
    if notice.stage_index >= len(action.stages):
        return ()
    return tuple(s for s in route.approvers_of(action.stages[notice.stage_index]) if s != state.requester)


def targets_of(notice: Notice, state: Tracked, *, action: ActionInfo, route: Route) -> list[Target]:
    """Every (channel, recipient) the notice goes to, in a stable order."""
    subjects = audience_of(notice, state, action=action, route=route)
    found: set[Target] = set()
    if "slack" in route.channels:
        # The channel carries the approvers' side (its one message is updated as the approval moves on);
        # the requester hears of outcomes in a direct message, and escalations always go to the person.
        if notice.audience == "approvers" and route.slack.channel:
            found.add(Target("slack", slack_channel(route.slack.channel)))
        if route.slack.direct or notice.audience == "escalation":
            found |= {Target("slack", slack_dm(s)) for s in subjects if route.person(s).slack or route.person(s).email}
    if "email" in route.channels:
        found |= {Target("email", email) for s in subjects if (email := route.person(s).email)}
    if "webhook" in route.channels:
        found |= {Target("webhook", url) for url in route.webhooks}
    return sorted(found)
