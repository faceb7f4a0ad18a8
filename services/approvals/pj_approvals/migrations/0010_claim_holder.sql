-- One holder per claim: the dispatcher process that first confirms a dispatch order (get_dispatch_plan)
-- holds its claim. Every other process asking with the same claim token is answered stale, and only
-- the holder's lease renewals are granted, so copies of an order delivered more than once (the outbox
-- publishes at least once) never run the plan twice. A re-issue by the reaper (a new claim token)
-- clears it, so the new claim is taken by whichever dispatcher confirms it first.
-- Not indexed: no statement looks an approval up by its holder, and its updates stay HOT.
ALTER TABLE approvals ADD COLUMN claim_holder text NULL;
