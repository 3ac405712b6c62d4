-- One row: how far a target commit has got across every known host. first_seen is
-- rollout_first_seen(target): the first run at the target or a descendant of it.
CREATE OR REPLACE MACRO rollout_summary(target, stale_hours := 24) AS TABLE
SELECT
    any_value(lower(target))                                 AS sha,
    count(*)                                                 AS hosts,
    count(*) FILTER (WHERE status = 'converged')             AS converged,
    count(*) FILTER (WHERE status = 'failed')                AS failed,
    count(*) FILTER (WHERE status = 'pending')               AS pending,
    count(*) FILTER (WHERE status = 'regressed')             AS regressed,
    count(*) FILTER (WHERE status = 'unreported')            AS unreported,
    round(100.0 * count(*) FILTER (WHERE status = 'converged') / nullif(count(*), 0), 1)
                                                             AS pct_converged,
    rollout_first_seen(target)                               AS first_seen
FROM rollout(target, stale_hours := stale_hours);
