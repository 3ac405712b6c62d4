-- rollout_curve(target, only_role := NULL): converged hosts at the end of every hour
-- from the hour the target was first seen to the current hour. "Converged" is the
-- contract's rule as of that time (see rollout_events), so the last point equals
-- the `converged` count of rollout_summary. Hours are UTC hours whatever the reader's
-- TimeZone setting. Runs count in the hour of the time they are ordered by (rollout_events'
-- `ordered_at`). A run dated after now (a host's clock ahead) counts in the current
-- hour: the curve ends now whatever the clocks of the fleet say (it ran to the newest ts
-- of any run, and one record dated 9999 made every rollout enumerate 70 M hours).
CREATE OR REPLACE MACRO utc_hour(t) AS timezone('UTC', date_trunc('hour', timezone('UTC', t)));

CREATE OR REPLACE MACRO rollout_curve(target, only_role := NULL) AS TABLE
WITH ev AS (
    SELECT e.host, e.ordered_at,
        CAST(e.converged AS INTEGER)
          - coalesce(CAST(lag(e.converged) OVER (PARTITION BY e.host ORDER BY e.seq) AS INTEGER), 0)
          AS delta
    FROM rollout_events(target) e
    WHERE only_role IS NULL
       OR e.host IN (SELECT host FROM rollout(target) WHERE role = only_role)
), hourly AS (
    SELECT least(utc_hour(ordered_at), utc_hour(now())) AS hour, sum(delta) AS delta FROM ev GROUP BY ALL
), first AS (
    SELECT utc_hour(rollout_first_seen(target)) AS hour  -- NULL: never seen, no curve
), hours AS (
    SELECT unnest(generate_series(
        CASE WHEN first.hour IS NOT NULL THEN least(first.hour, utc_hour(now())) END,
        utc_hour(now()),
        INTERVAL 1 HOUR
    )) AS hour
    FROM first
)
SELECT hours.hour,
    CAST(sum(coalesce(hourly.delta, 0)) OVER (ORDER BY hours.hour) AS BIGINT) AS converged
FROM hours LEFT JOIN hourly USING (hour)
ORDER BY hours.hour;
