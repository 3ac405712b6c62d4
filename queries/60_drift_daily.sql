-- Drift over time: per UTC day and role, the hosts that reported that day, judged by
-- their last run of the day (every field below from that one run; the role is the last
-- one the host reported that day, so a run that failed before reading its role keeps
-- the host in its role).
--   hosts, distinct_shas   hosts reporting; distinct commits of their last runs
--   modal_sha, off_modal   the most common commit (ties: the smallest sha) and hosts not on it
--   failing                hosts whose last run of the day failed
--   with_override          ... that ran with an override file
--   dirty                  ... that ran from a checkout with local changes
--   override_differs       hosts whose current override (the last reachable observation
--   vault_differs          by the end of the day) differs from what puppet last applied
--                          successfully by then; hosts never observed or never successful
--                          are not counted, nor is a hash the collector could not read
--   config_differs         hosts with either difference
CREATE OR REPLACE VIEW drift_daily AS
WITH days AS (
    -- a struct is never NULL, so arg_max takes the last run even where its values are NULL
    -- the UTC day whatever the reader's TimeZone setting (DuckDB itself, say)
    SELECT host, CAST(timezone('UTC', ts) AS DATE) AS day, arg_max(role, recency) AS role,
        arg_max({'sha': git_sha, 'ok': success, 'o': override_sha, 'dirty': git_dirty}, recency)
            AS last,
        arg_max({'o': override_sha, 'v': vault_sha}, recency) FILTER (WHERE success) AS ok_day
    FROM (SELECT *, run_recency(ts, source, byte_offset, run_id, recency_ts := recency_ts) AS recency FROM runs)
    GROUP BY ALL
), daily AS (
    SELECT host, day, role, last.sha AS sha, last.ok AS ok, last.o AS override_sha,
        last.dirty AS dirty, ok_day
    FROM days
), applied AS (
    SELECT *,
        timezone('UTC', CAST(day AS TIMESTAMP) + INTERVAL 1 DAY) AS day_end,  -- UTC midnight
        last_value(ok_day IGNORE NULLS) OVER (
            PARTITION BY host ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS last_ok
    FROM daily
), judged AS (
    SELECT a.*,
        o.host IS NOT NULL AND a.last_ok IS NOT NULL AND o.override_known
            AND o.override_sha IS DISTINCT FROM a.last_ok.o AS override_differs,
        o.host IS NOT NULL AND a.last_ok IS NOT NULL AND o.vault_known
            AND o.vault_sha IS DISTINCT FROM a.last_ok.v AS vault_differs
    FROM applied a
    ASOF LEFT JOIN (
        -- a hash the collector could not read (override present but unreadable, vault
        -- without sudo) is unknown, not a difference; an absent file is known (NULL)
        SELECT host, observed_at, override_sha, vault_sha,
            override_sha IS NOT NULL OR NOT coalesce(override_present, false) AS override_known,
            vault_sha IS NOT NULL OR coalesce(vault_status, 'absent') = 'absent' AS vault_known
        FROM observations WHERE reachable
    ) o ON a.host = o.host AND a.day_end > o.observed_at
), sha_counts AS (
    SELECT day, role, sha, count(*) AS n FROM daily WHERE sha IS NOT NULL GROUP BY ALL
), modal AS (
    SELECT day, role, first(sha ORDER BY n DESC, sha) AS modal_sha
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
    count(*) FILTER (WHERE d.dirty)                             AS dirty,
    count(*) FILTER (WHERE d.override_differs)                  AS override_differs,
    count(*) FILTER (WHERE d.vault_differs)                     AS vault_differs,
    count(*) FILTER (WHERE d.override_differs OR d.vault_differs) AS config_differs
FROM judged d LEFT JOIN modal m ON m.day = d.day AND m.role IS NOT DISTINCT FROM d.role
GROUP BY d.day, d.role, m.modal_sha
ORDER BY d.day, d.role;
