-- The event relay publishes events in commit order, and none is skipped. Each event records the
-- transaction that wrote it; the relay reads only events whose transaction is older than the oldest
-- one still running (pg_snapshot_xmin of its snapshot): every transaction below that has finished,
-- so that set of events is final, and reading it in (tx, id) order after a cursor never passes an
-- event that commits later. (Event ids alone could not say that: a statement that took id 100 may
-- commit after the one that took 101, and a timestamp is read before the writer even waits for a
-- connection, or on another host's clock.)
-- Existing events get tx 0: they sort before every new one, so the relay publishes any it has not
-- yet published first.
ALTER TABLE approval_events ADD COLUMN tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE approval_events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
CREATE INDEX approval_events_tx ON approval_events (tx, id);

-- The cursor is (last_tx, last_id). A relay holds the cursor row by a lease (holder, held_until) rather
-- than a row lock, so no transaction stays open while the broker confirms; it advances the cursor by
-- compare-and-set on the position it read.
ALTER TABLE event_relay
    ADD COLUMN last_tx    xid8 NOT NULL DEFAULT '0',
    ADD COLUMN holder     uuid,
    ADD COLUMN held_until timestamptz;
