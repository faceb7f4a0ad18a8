"""The runbook's approval metrics, in a registry owned by one service instance (no globals)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Labels stay low-cardinality by rule: action type, result, status; never users or ids.


class ApprovalMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.created = Counter("approvals_created", "Approvals created via governance gate",
                               ["action_type"], registry=r)
        self.approved = Counter("approvals_approved", "Approvals decided as approved", ["action_type"], registry=r)
        self.rejected = Counter("approvals_rejected", "Approvals decided as rejected", ["action_type"], registry=r)
        self.expired = Counter("approvals_expired", "Approvals that expired before decision or dispatch",
                               ["status"], registry=r)
        self.pending = Gauge("approval_pending_gauge", "Current pending approvals", registry=r)
        self.approval_time = Histogram(
            "approval_time_seconds", "Seconds from creation to decision", ["status"], registry=r,
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400, 172800))
        self.dispatch_success = Counter("dispatch_success", "Successful dispatches to connectors",
                                        ["action_type"], registry=r)
        self.dispatch_failure = Counter("dispatch_failure", "Failed dispatches to connectors",
                                        ["action_type"], registry=r)
        self.dispatch_latency = Histogram(
            "dispatch_latency_seconds", "Duration of dispatch plan execution", ["result"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.consume_success = Counter("consume_for_dispatch_success", "Successful CAS lock acquisitions",
                                       registry=r)
        self.consume_conflict = Counter("consume_for_dispatch_conflict",
                                        "CAS conflicts (double-dispatch prevented)", registry=r)
        self.plan_changed = Counter("dispatch_plan_changed",
                                    "Dispatches refused because the plan changed since approval", registry=r)
        # Read from the database at each scrape, like the pending gauge: every process sees the same outbox.
        self.outbox_orders = Gauge("dispatch_outbox_orders", "Dispatch orders committed and not yet confirmed "
                                   "by the broker (waiting in the outbox)", registry=r)
        self.outbox_oldest = Gauge("dispatch_outbox_oldest_seconds", "Age of the oldest order waiting in the "
                                   "dispatch outbox (0: none waits)", registry=r)
        # Every approvals process reads the same queue: several series are copies of one number (max()).
        self.dead_letters = Gauge("pj_dead_letters", "Messages in the dead-letter queue", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
