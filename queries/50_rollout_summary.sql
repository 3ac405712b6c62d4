-- One row: how far a target commit has got across every known host. first_seen is
-- rollout_first_seen(target): the first run at the target or a descendant of it.
CREATE OR REPLACE MACRO rollout_summary(target, stale_hours := 24) AS TABLE
-- the sha outside the aggregate: named even when no host is in scope
SELECT lower(target) AS sha, c.*, rollout_first_seen(target) AS first_seen
FROM (SELECT unnest(status_counts(status)) FROM rollout(target, stale_hours := stale_hours)) c;
