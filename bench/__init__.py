"""`make bench`: the load generator, the webhook receiver and the instruments that measure the system."""
