-- One row: how far a target commit has got across every known host. first_seen is
-- rollout_first_seen(target): the first run at the target or a descendant of it.
CREATE OR REPLACE MACRO rollout_summary(target, stale_hours := 24) AS TABLE
SELECT
    any_value(lower(target))   AS sha,
    unnest(status_counts(status)),
    rollout_first_seen(target) AS first_seen
FROM rollout(target, stale_hours := stale_hours);
