"""The channels a notification goes out on; each turns its failures into `DeliveryFailed`."""

from dataclasses import dataclass


class DeliveryFailed(Exception):
    """A notification was not delivered: `permanent` when trying again cannot help (a bad address, a
    channel the bot is not in, a missing setting); else it is tried again with the event."""

    def __init__(self, reason: str, *, permanent: bool, retry_after: float | None = None,
                 unsure: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
        # The request may have reached its target (no answer came): it may have had its effect.
        self.unsure = unsure


@dataclass(frozen=True)
class SlackPost:
    """Where a posted Slack message is: the channel id Slack answered (a DM's own id) and its ts."""

    channel: str
    ts: str
