-- Rollout status of every known host for a target commit (full sha), first match wins:
--   failed      latest run was at the target and failed
--   converged   latest successful run was at the target
--   regressed   had a successful run at the target, latest successful run is elsewhere
--   unreported  none of the above and no run within stale_hours (default 24)
--   pending     the rest
-- converged_at: when the current unbroken stretch at the target began.
CREATE OR REPLACE MACRO rollout(target, stale_hours := 24) AS TABLE
WITH at_target AS (
    SELECT sha FROM commits_at(target)
), marked AS (
    SELECT r.host, r.ts, r.success, r.git_sha IN (SELECT sha FROM at_target) AS is_at
    FROM runs r
), per_host AS (
    SELECT host,
        max(ts) FILTER (WHERE success AND NOT coalesce(is_at, false)) AS last_ok_elsewhere,
        bool_or(success AND coalesce(is_at, false))                   AS ever_ok_at
    FROM marked GROUP BY host
), converged_since AS (
    SELECT m.host, min(m.ts) AS converged_at
    FROM marked m JOIN per_host p USING (host)
    WHERE m.success AND m.is_at AND (p.last_ok_elsewhere IS NULL OR m.ts > p.last_ok_elsewhere)
    GROUP BY m.host
)
SELECT
    hs.host,
    hs.role,
    CASE
        WHEN lr.git_sha IN (SELECT sha FROM at_target) AND NOT lr.success THEN 'failed'
        WHEN ls.git_sha IN (SELECT sha FROM at_target) THEN 'converged'
        WHEN coalesce(p.ever_ok_at, false) THEN 'regressed'
        WHEN lr.ts IS NULL OR lr.ts < now() - to_hours(CAST(stale_hours AS BIGINT)) THEN 'unreported'
        ELSE 'pending'
    END AS status,
    CASE WHEN ls.git_sha IN (SELECT sha FROM at_target) THEN cs.converged_at END AS converged_at,
    lr.git_sha AS latest_sha,
    lr.ts AS latest_ts,
    lr.success AS latest_success,
    lr.exit_code AS latest_exit_code,
    ls.git_sha AS latest_ok_sha
FROM host_state hs
LEFT JOIN latest_run lr USING (host)
LEFT JOIN latest_success ls USING (host)
LEFT JOIN per_host p USING (host)
LEFT JOIN converged_since cs USING (host);
