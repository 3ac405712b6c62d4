-- Helper views: each host's latest run, latest successful run and latest observations.
--
-- run_recency orders a host's runs: the larger, the newer. By the time the run finished,
-- as far as the host's own record shows it: recency_ts, which is ts raised to the newest
-- ts of the lines appended before it to the same history (a clock set back by NTP after
-- it ran ahead; migrations/003_recency.sql), else (NULL, or not given) ts. Among runs at
-- the same time, a history line over the same run seen in a state file (over puppet's
-- summary), then the line appended later (the wrapper appends a host's runs in the order
-- they finish), then a hash of run_id. Every "latest" (arg_max on it) and every ordering
-- of a host's runs (ORDER BY it) uses it, so status, history, rollout and drift agree on
-- which run came last. One number, not a struct: epoch microseconds (58 bits up to
-- 9999) | 2 bits of source | 40 bits of offset | 26 bits of run_id's hash; aggregating on
-- it costs what a timestamp does (a struct key of the same parts doubled drift_daily).
-- One aggregation pass with arg_max on the key, not a sort of every run (7.3 s -> 0.3 s
-- on 8.6 M runs).
CREATE OR REPLACE MACRO run_recency(ts, source, byte_offset, run_id, recency_ts := NULL) AS
    (CAST(epoch_us(coalesce(recency_ts, ts)) AS HUGEINT) << 68)
    + (CAST(CASE source WHEN 'history' THEN 2 WHEN 'state_file' THEN 1 ELSE 0 END AS HUGEINT) << 66)
    + (CAST(least(greatest(coalesce(byte_offset, 0), 0), 1099511627775) AS HUGEINT) << 26)
    + CAST(hash(run_id) >> 38 AS HUGEINT);

CREATE OR REPLACE VIEW latest_run AS
SELECT unnest(arg_max(r, run_recency(r.ts, r.source, r.byte_offset, r.run_id, recency_ts := r.recency_ts)))
FROM runs r GROUP BY r.host;

CREATE OR REPLACE VIEW latest_success AS
SELECT unnest(arg_max(r, run_recency(r.ts, r.source, r.byte_offset, r.run_id, recency_ts := r.recency_ts)))
FROM runs r WHERE r.success GROUP BY r.host;

-- observations of one instant: the line appended later wins, as for runs
CREATE OR REPLACE VIEW latest_observation AS
SELECT unnest(arg_max(o, {'at': o.observed_at, 'offset': coalesce(o.byte_offset, 0)}))
FROM observations o GROUP BY o.host;

-- the last time the collector reached the host: its current override and vault
CREATE OR REPLACE VIEW latest_contact AS
SELECT unnest(arg_max(o, {'at': o.observed_at, 'offset': coalesce(o.byte_offset, 0)}))
FROM observations o WHERE o.reachable GROUP BY o.host;

-- a host's worker: the freshest activity any pool or fetch has shown for it (a worker moved
-- to another pool is still listed, stale, by the old one; one workerId may be in two
-- workerGroups). Its quarantine is that of the pool it works in: of each listing (host,
-- pool, worker) the latest fetch (where a lifted quarantine shows as NULL; the larger if
-- one fetch lists it twice), and of those the one active last (then fetched last, then
-- with the larger quarantine). So a stale listing by the
-- old pool neither adds a quarantine nor hides one, whatever order the pools were fetched.
CREATE OR REPLACE VIEW latest_activity AS
WITH listing AS (
    SELECT unnest(arg_max(w, {'o': w.observed_at,
        'q': coalesce(w.quarantined_until, '-infinity'::TIMESTAMPTZ)}))
    FROM worker_activity w GROUP BY w.host, w.worker_pool, w.worker_id
),
current AS (
    SELECT l.host,
        arg_max(l, {'a': coalesce(l.last_active, '-infinity'::TIMESTAMPTZ),
                    'o': l.observed_at,
                    'q': coalesce(l.quarantined_until, '-infinity'::TIMESTAMPTZ)}) AS w
    FROM listing l GROUP BY l.host
)
SELECT a.host, max(a.observed_at) AS observed_at,
    any_value(c.w.worker_pool) AS worker_pool, any_value(c.w.worker_id) AS worker_id,
    max(a.last_active) AS last_active,
    any_value(c.w.quarantined_until) AS quarantined_until,
    any_value(c.w.extra) AS extra
FROM worker_activity a JOIN current c USING (host)
GROUP BY a.host;
