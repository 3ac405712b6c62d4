-- rollout_by_role(target): rollout_summary's counts per role.
CREATE OR REPLACE MACRO rollout_by_role(target, stale_hours := 24) AS TABLE
SELECT
    role,
    count(*)                                                 AS hosts,
    count(*) FILTER (WHERE status = 'converged')             AS converged,
    count(*) FILTER (WHERE status = 'failed')                AS failed,
    count(*) FILTER (WHERE status = 'pending')               AS pending,
    count(*) FILTER (WHERE status = 'regressed')             AS regressed,
    count(*) FILTER (WHERE status = 'unreported')            AS unreported,
    round(100.0 * count(*) FILTER (WHERE status = 'converged') / count(*), 1) AS pct_converged
FROM rollout(target, stale_hours := stale_hours)
GROUP BY role
ORDER BY role NULLS LAST;
