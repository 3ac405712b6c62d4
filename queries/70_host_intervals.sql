-- Each host on each commit, from when to when: consecutive successful runs at the same
-- commit form one interval (a failed run does not change what is applied); runs oldest
-- first (by run_recency). Times are those runs are ordered by (recency_ts, else ts), so
-- after a clock set back an interval still never ends before it starts.
--   from_ts   first successful run of the interval
--   to_ts     first successful run of the next interval; NULL while current
--   last_ts   last successful run within the interval
--   runs      successful runs in it;  duration_s  up to to_ts, or now while current
CREATE OR REPLACE VIEW host_intervals AS
WITH ok AS (
    SELECT host, coalesce(recency_ts, ts) AS ts, role, git_sha, git_branch,
        run_recency(ts, source, byte_offset, run_id, recency_ts := recency_ts) AS recency,
        CASE WHEN git_sha IS DISTINCT FROM lag(git_sha) OVER w THEN 1 ELSE 0 END AS starts
    FROM runs WHERE success
    WINDOW w AS (PARTITION BY host ORDER BY run_recency(ts, source, byte_offset, run_id, recency_ts := recency_ts))
), numbered AS (
    SELECT *, sum(starts) OVER (
        PARTITION BY host ORDER BY recency ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS interval_no
    FROM ok
), intervals AS (
    SELECT host, interval_no, any_value(git_sha) AS git_sha,
        arg_max(git_branch, recency) AS git_branch, arg_max(role, recency) AS role,
        min(ts) AS from_ts, max(ts) AS last_ts, count(*) AS runs
    FROM numbered GROUP BY host, interval_no
)
SELECT host, role, git_sha, git_branch, from_ts,
    lead(from_ts) OVER (PARTITION BY host ORDER BY interval_no) AS to_ts,
    last_ts, runs,
    -- 0, not negative, while the current interval starts after now (a clock ahead)
    greatest(CAST(epoch(coalesce(lead(from_ts) OVER (PARTITION BY host ORDER BY interval_no),
                                 now())) - epoch(from_ts) AS BIGINT), 0) AS duration_s
FROM intervals;
