-- Counting a tenant's unexpired pending approvals reads only this index (GET /count/pending, the
-- list's pendingCount, the pending gauge), not the rows.
CREATE INDEX approvals_tenant_pending ON approvals (tenant_id, expires_at) WHERE approval_status = 'pending';
