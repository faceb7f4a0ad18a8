-- Every statement on a hot path reaches its approval by primary key whatever the statistics say, and
-- the table keeps only the indexes some statement needs.
--
-- A partial index whose predicate a point statement's own conditions imply (status = 'pending' implies
-- status IN ('pending', 'approved')) is a candidate plan for that statement, and a small one looks
-- cheaper than the primary key: without statistics the decide compare-and-set scanned a tenant's
-- pending approvals (approvals_tenant_pending) and filtered by id. So no index below serves a statement
-- that does not ask for it: the sweeper's index is on a column only the sweeper and the pending gauge
-- read, and the reaper's predicate needs a condition on the lease that only the reaper has.
--
-- An update stays HOT (no new index entries, the new version on the same page) only when no indexed
-- column changes; a status change never can, since listing by status needs the status in an index.
-- Fewer indexes still mean fewer entries written by every update that is not HOT, and the fillfactor
-- leaves room on each page for new row versions (the rewrite below applies it to the whole table).
ALTER TABLE approvals SET (fillfactor = 80);

-- Dropped before the rewrite, which would otherwise rebuild them first.
DROP INDEX approvals_expiry;                  -- replaced by approvals_expiry_due
DROP INDEX approvals_tenant_pending;          -- the pending count reads approvals_tenant_status_created
DROP INDEX approvals_tenant_status_created;   -- rebuilt with expires_at for that count
DROP INDEX IF EXISTS approvals_dispatch_lease;  -- rebuilt with a predicate only the reaper meets

-- When the expiry sweeper acts on the approval: its expiry while it is pending or approved, NULL
-- once it is neither.
ALTER TABLE approvals ADD COLUMN expiry_due_at timestamptz GENERATED ALWAYS AS
    (CASE WHEN approval_status IN ('pending', 'approved') THEN expires_at END) STORED;

-- The sweeper (expiry_due_at <= now, oldest first) and the all-tenant pending gauge (expiry_due_at > now,
-- counted by status from the index alone).
CREATE INDEX approvals_expiry_due ON approvals (expiry_due_at) INCLUDE (approval_status)
    WHERE expiry_due_at IS NOT NULL;

-- A tenant's list by status, and its pending count (expires_at read from the index).
CREATE INDEX approvals_tenant_status_created ON approvals (tenant_id, approval_status, created_at DESC, id)
    INCLUDE (expires_at);

-- The lease reaper's (dispatching, lease run out). The dispatch's own statements (by id and claim
-- token) never test the lease, so its predicate keeps them off this index.
CREATE INDEX approvals_dispatch_lease ON approvals (lease_expires_at)
    WHERE approval_status = 'dispatching' AND lease_expires_at IS NOT NULL;
