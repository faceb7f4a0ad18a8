-- approval_events is the outbox of lifecycle events: each is written in the same statement as its
-- transition, and the relay publishes them in id order, remembering here how far it got.
CREATE TABLE event_relay (
    name    text PRIMARY KEY,
    last_id bigint NOT NULL
);
-- Start after the events that exist now: they happened before the relay did.
INSERT INTO event_relay (name, last_id) SELECT 'events', coalesce(max(id), 0) FROM approval_events;
