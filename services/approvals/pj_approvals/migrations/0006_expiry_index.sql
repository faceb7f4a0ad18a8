-- The sweeper expires approved approvals too (dispatch window), so its index covers both statuses.
DROP INDEX approvals_pending_expiry;
CREATE INDEX approvals_expiry ON approvals (expires_at) WHERE approval_status IN ('pending', 'approved');
