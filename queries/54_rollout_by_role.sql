-- rollout_by_role(target): rollout_summary's counts per role.
CREATE OR REPLACE MACRO rollout_by_role(target, stale_hours := 24) AS TABLE
SELECT role, unnest(status_counts(status))
FROM rollout(target, stale_hours := stale_hours)
GROUP BY role
ORDER BY role NULLS LAST;
