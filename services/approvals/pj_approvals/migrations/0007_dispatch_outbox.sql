-- Dispatch orders leave through an outbox: the compare-and-set to dispatching writes its order row in
-- the same statement, and a relay publishes the rows after commit (then deletes them). A crash between
-- the commit and the publish loses nothing: the row waits here until a relay of any approvals process
-- takes it.
CREATE TABLE dispatch_outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    approval_id   uuid        NOT NULL REFERENCES approvals (id),
    -- The queue the order goes to (the dispatch queue of the approvals process that wrote it).
    queue         text        NOT NULL,
    -- The order's exact bytes: what is published and what its signature covers.
    body          bytea       NOT NULL,
    created_at    timestamptz NOT NULL,
    -- A relay that took the row publishes it until then; after that (its process died) any relay may.
    claimed_until timestamptz
) WITH (fillfactor = 70);  -- room on the page for the claim's update to stay HOT (no index touches it)

CREATE INDEX dispatch_outbox_queue ON dispatch_outbox (queue, id);

-- Wakes the relays of every approvals process at commit (they also poll, in case a notice is missed).
CREATE FUNCTION notify_dispatch_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('pj_dispatch_outbox', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER dispatch_outbox_notify AFTER INSERT ON dispatch_outbox
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION notify_dispatch_outbox();

-- Which attempt of its dispatch the current claim is: the lease reaper re-issues an expired claim as
-- the next attempt, up to PJ_MAX_DISPATCH_ATTEMPTS.
ALTER TABLE approvals ADD COLUMN dispatch_attempt integer NOT NULL DEFAULT 0;
