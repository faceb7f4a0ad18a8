-- A dispatch holds its claim for a lease; the sweeper fails dispatches whose lease ran out (a lost
-- order, every dispatcher gone), so no approval waits in dispatching for good.
ALTER TABLE approvals ADD COLUMN lease_expires_at timestamptz;
CREATE INDEX approvals_dispatch_lease ON approvals (lease_expires_at) WHERE approval_status = 'dispatching';
