-- Approval lifecycle records, their step checkpoints and their append-only audit trail.
CREATE TABLE approvals (
    id              uuid PRIMARY KEY,
    tenant_id       text        NOT NULL,
    request_id      text        NOT NULL,
    operator_id     text        NOT NULL,
    action_id       text        NOT NULL,
    payload         jsonb       NOT NULL,
    -- sha256 of the canonical (action, payload): tells a retried request from a conflicting one.
    request_hash    text        NOT NULL,
    approval_status text        NOT NULL CHECK (approval_status IN
        ('pending', 'approved', 'rejected', 'dispatching', 'dispatched', 'dispatch_failed', 'expired')),
    approver_id     text,
    approval_note   text,
    plan            jsonb       NOT NULL,
    plan_hash       text        NOT NULL,
    dispatch_result jsonb,
    -- Proves a step report belongs to the dispatch that won the CAS, not an older one.
    claim_token     uuid,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    decided_at      timestamptz,
    dispatched_at   timestamptz,
    finished_at     timestamptz,
    expires_at      timestamptz NOT NULL,
    UNIQUE (tenant_id, request_id)
);

CREATE INDEX approvals_tenant_created ON approvals (tenant_id, created_at DESC, id);
CREATE INDEX approvals_tenant_status_created ON approvals (tenant_id, approval_status, created_at DESC, id);
CREATE INDEX approvals_pending_expiry ON approvals (expires_at) WHERE approval_status = 'pending';

CREATE TABLE approval_steps (
    approval_id uuid        NOT NULL REFERENCES approvals (id),
    step_id     text        NOT NULL,
    claim_token uuid        NOT NULL,
    status      text        NOT NULL,
    outcome     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (approval_id, step_id)
);

CREATE TABLE approval_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    approval_id    uuid        NOT NULL REFERENCES approvals (id),
    tenant_id      text        NOT NULL,
    event_type     text        NOT NULL,
    actor          text,
    actor_role     text,
    from_status    text,
    to_status      text        NOT NULL,
    note           text,
    correlation_id text,
    occurred_at    timestamptz NOT NULL
);

CREATE INDEX approval_events_approval ON approval_events (approval_id, id);
