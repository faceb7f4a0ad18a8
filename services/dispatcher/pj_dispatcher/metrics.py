"""What one dispatcher process did, for Prometheus (its own registry; labels stay low-cardinality)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DispatcherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps = Counter("dispatch_steps", "Plan steps finished, by connector and outcome",
                             ["connector", "status"], registry=r)
        self.step_seconds = Histogram("dispatch_step_seconds", "Duration of one step, retries included",
                                      ["connector"], registry=r,
                                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.retries = Counter("dispatch_step_retries", "Step attempts that failed and were retried",
                               ["connector"], registry=r)
        self.in_flight = Gauge("dispatch_orders_in_flight", "Dispatch orders this process is running",
                               registry=r)
        self.stale = Counter("dispatch_orders_stale", "Orders dropped: their claim no longer "
                             "holds (or never did), or another dispatcher holds it",
                             registry=r)
        self.orders = Counter("dispatch_orders", "Orders received, by delivery: `signed` (first delivery) and "
                              "`redelivered` (each confirmed with approvals before it runs), `unsigned` and "
                              "`bad_signature` (dead-lettered, never run)",
                              ["admission"], registry=r)
        self.duplicates = Counter("dispatch_orders_duplicate", "Copies of an order whose claim was already "
                                  "running, or spent, in this process: dropped", registry=r)
        self.bad_signature = Counter("dispatch_orders_bad_signature",
                                     "Orders whose signature header did not check out (dead-lettered, never run)",
                                     registry=r)
        self.lease_renewals = Counter("dispatch_lease_renewals", "Lease renewals, by outcome: granted, refused "
                                      "(the claim is stale), unanswered", ["outcome"], registry=r)
        self.report_retries = Counter("dispatch_report_retries", "Step reports not published at the first try "
                                      "(broker connection lost or confirm late), tried again", registry=r)
        self.plans_stopped = Counter("dispatch_plans_stopped", "Plans stopped before their end: `lease_lost` "
                                     "(renewal refused), `lease_expired` (renewals unanswered), `handed_back` "
                                     "(the delivery was held for PJ_ORDER_HOLD_MAX_S)", ["reason"], registry=r)
