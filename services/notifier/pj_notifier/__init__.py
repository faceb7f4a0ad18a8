"""The notifier: tells approvers and requesters about approvals where they work."""
