-- When a host's clock was set back (NTP correcting a clock that ran ahead), the runs it
-- appended next carry a ts before the one it appended last. The history's order is the
-- order the runs finished, so a run is at least as recent as every line appended before it
-- in the same history file: recency_ts is ts raised to the newest ts of those lines, set
-- only where that is later than the run's own ts (NULL: ts itself, which keeps the column
-- nearly free to store). run_recency orders by coalesce(recency_ts, ts); ts stays as written.
-- The loader counts every valid line (a repeat too); here only the stored runs are known,
-- and a file the loader read again from 0 (replaced) counts its old runs before its new
-- ones at the same offset (by rowid: the order they were stored in).
ALTER TABLE runs ADD COLUMN recency_ts TIMESTAMPTZ;

UPDATE runs SET recency_ts = h.raised
FROM (
    SELECT rowid AS row_id, ts,
        max(ts) OVER (PARTITION BY source_path ORDER BY byte_offset, rowid
                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS raised
    FROM runs WHERE source = 'history' AND source_path IS NOT NULL
) h
WHERE runs.rowid = h.row_id AND h.raised > h.ts;

-- each history's newest line so far, where the next load reads on from
ALTER TABLE load_cursors ADD COLUMN recency_ts TIMESTAMPTZ;

UPDATE load_cursors SET recency_ts = m.newest
FROM (
    SELECT source_path, max(coalesce(recency_ts, ts)) AS newest
    FROM runs WHERE source = 'history' GROUP BY source_path
) m
WHERE load_cursors.source_path = m.source_path;
