-- rollout_hosts(target): rollout() per host, in depth. Beyond the contract's columns:
--   behind, ahead        commits the host's latest commit lacks / has beyond the target
--                        (NULL when either is missing from the commit graph)
--   first_seen           rollout_first_seen(target), the same for every host
--   time_to_converge_s   converged_at - first_seen, for converged hosts
--   waiting_since        for the others: when the host last stopped being converged,
--                        else first_seen (how long it has been a straggler)
--   failures, failure_exit_codes   failed runs since first_seen, exit codes in order
CREATE OR REPLACE MACRO rollout_hosts(target, stale_hours := 24) AS TABLE
WITH ro AS (
    SELECT * FROM rollout(target, stale_hours := stale_hours)
), fs AS (
    SELECT rollout_first_seen(target) AS first_seen
), dist AS (
    SELECT * FROM commit_distance(
        target, coalesce((SELECT list(DISTINCT latest_sha) FROM ro WHERE latest_sha IS NOT NULL), [])
    )
), ev AS (
    SELECT *, lag(converged) OVER (PARTITION BY host ORDER BY seq) AS was_converged
    FROM rollout_events(target)
), per_host AS (
    SELECT host,
        count(*) FILTER (WHERE NOT success)                            AS failures,
        list(exit_code ORDER BY seq) FILTER (WHERE NOT success)        AS failure_exit_codes,
        max(ts) FILTER (WHERE NOT converged AND was_converged)         AS left_at
    FROM ev GROUP BY host
)
SELECT
    ro.host, ro.role, ro.status, ro.converged_at, ro.latest_sha, ro.latest_ts,
    ro.latest_success, ro.latest_exit_code, ro.latest_ok_sha,
    d.behind, d.ahead,
    fs.first_seen,
    CASE WHEN ro.status = 'converged'
         THEN CAST(epoch(ro.converged_at) - epoch(fs.first_seen) AS BIGINT) END AS time_to_converge_s,
    CASE WHEN ro.status <> 'converged' THEN coalesce(p.left_at, fs.first_seen) END AS waiting_since,
    coalesce(p.failures, 0)                                            AS failures,
    coalesce(p.failure_exit_codes, [])                                 AS failure_exit_codes
FROM ro
CROSS JOIN fs
LEFT JOIN dist d ON d.sha = ro.latest_sha
LEFT JOIN per_host p ON p.host = ro.host;
