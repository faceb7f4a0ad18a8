-- Multi-stage approval rules: each approval keeps the rule it was created under (a catalog reload
-- never changes it), the stage it is in, and every decision, one per approver.
ALTER TABLE approvals
    ADD COLUMN approval_rule   jsonb   NOT NULL
        DEFAULT '{"stages": [{"name": "approval", "roles": ["admin"], "approvalsRequired": 1}], "dispatchWindowS": 86400}',
    ADD COLUMN stage_index     integer NOT NULL DEFAULT 0,
    ADD COLUMN stage_approvals integer NOT NULL DEFAULT 0;

CREATE TABLE approval_decisions (
    approval_id    uuid        NOT NULL REFERENCES approvals (id),
    -- One decision per person per approval: nobody counts twice, in any stage.
    approver_id    text        NOT NULL,
    approver_role  text        NOT NULL,
    stage_index    integer     NOT NULL,
    stage_name     text        NOT NULL,
    decision       text        NOT NULL CHECK (decision IN ('approved', 'rejected')),
    note           text,
    correlation_id text,
    decided_at     timestamptz NOT NULL,
    PRIMARY KEY (approval_id, approver_id)
);
