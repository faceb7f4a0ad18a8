"""What one notifier process did, for Prometheus (its own registry; labels stay low-cardinality)."""

from prometheus_client import CollectorRegistry, Counter, Gauge


class NotifierMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sent = Counter("notifier_notifications_sent", "Notifications delivered (Slack posts and in-place "
                            "updates, emails, webhook calls), by channel", ["channel"], registry=r)
        self.failed = Counter("notifier_notifications_failed", "Notification attempts that failed, by channel and "
                              "whether they are tried again (`retry`) or given up (`permanent`)",
                              ["channel", "kind"], registry=r)
        self.events = Counter("notifier_events", "Events taken from the events exchange, by type, and whether "
                              "they were new or seen before (a redelivery)", ["type", "seen"], registry=r)
        self.reminders = Counter("notifier_reminders", "Reminders sent to a stage's approvers", registry=r)
        self.escalations = Counter("notifier_escalations", "Escalations sent to an escalation group", registry=r)
        self.broker_connected = Gauge("notifier_broker_connected", "1 while this process consumes events",
                                      registry=r)
        self.last_scan = Gauge("notifier_reminder_scan_timestamp_seconds",
                               "When the reminder scan last finished", registry=r)
