-- rollout_events(target): every run since the target was first seen, with the host's
-- rollout state right after it. `converged` applies the contract's rules 1 and 2 to
-- the history up to and including that run: the latest successful run is at the
-- target, and the run itself is not a failure at the target. `seq` orders a host's
-- runs oldest first (by run_recency), and `ordered_at` is the time they are ordered by
-- (recency_ts, else ts): after a clock set back, a run with a ts before first_seen may
-- come after the first sighting, so the cut is on `ordered_at` too.
CREATE OR REPLACE MACRO rollout_events(target) AS TABLE
WITH at_target AS (
    SELECT sha FROM commits_at(target)
), r AS (
    SELECT host, ts, coalesce(recency_ts, ts) AS ordered_at, run_id, success, exit_code, git_sha,
        coalesce(git_sha IN (SELECT sha FROM at_target), false) AS is_at,
        run_recency(ts, source, byte_offset, run_id, recency_ts := recency_ts) AS recency
    FROM runs
    WHERE coalesce(recency_ts, ts) >= rollout_first_seen(target)
), s AS (
    SELECT *,
        row_number() OVER w AS seq,
        coalesce(last_value(CASE WHEN success THEN is_at END IGNORE NULLS) OVER w, false) AS ok_at
    FROM r
    WINDOW w AS (PARTITION BY host ORDER BY recency
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT host, seq, ts, ordered_at, run_id, success, exit_code, git_sha, is_at,
    ok_at AND NOT (is_at AND NOT success) AS converged
FROM s;
