-- Drift over time: per UTC day and role, the hosts that reported that day (their last
-- run of the day), how many commits they were on, the most common one and who was off it.
CREATE OR REPLACE VIEW drift_daily AS
WITH daily AS (
    SELECT host, CAST(ts AS DATE) AS day,
        arg_max(role, ts) AS role, arg_max(git_sha, ts) AS sha, arg_max(success, ts) AS ok,
        arg_max(override_sha, ts) AS override_sha, arg_max(git_dirty, ts) AS dirty
    FROM runs GROUP BY host, CAST(ts AS DATE)
), sha_counts AS (
    SELECT day, role, sha, count(*) AS n FROM daily WHERE sha IS NOT NULL GROUP BY ALL
), modal AS (
    SELECT day, role, arg_max(sha, n * 1e12 - hash(sha) % 1000000) AS modal_sha
    FROM sha_counts GROUP BY day, role
)
SELECT
    d.day,
    d.role,
    count(*)                                                    AS hosts,
    count(DISTINCT d.sha)                                       AS distinct_shas,
    m.modal_sha,
    count(*) FILTER (WHERE d.sha IS DISTINCT FROM m.modal_sha)  AS off_modal,
    count(*) FILTER (WHERE NOT d.ok)                            AS failing,
    count(*) FILTER (WHERE d.override_sha IS NOT NULL)          AS with_override,
    count(*) FILTER (WHERE d.dirty)                             AS dirty
FROM daily d LEFT JOIN modal m USING (day, role)
GROUP BY d.day, d.role, m.modal_sha
ORDER BY d.day, d.role;
