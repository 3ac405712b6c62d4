-- When a host's clock was set back (NTP correcting a clock that ran ahead), the runs it
-- appended next carry a ts before the one it appended last. The history's order is the
-- order the runs finished, so a run is at least as recent as every line appended before it
-- in the same history file: recency_ts is ts raised to the newest ts of those lines, set
-- only where that is later than the run's own ts (NULL: ts itself, which keeps the column
-- nearly free to store). run_recency orders by coalesce(recency_ts, ts); ts stays as written.
ALTER TABLE runs ADD COLUMN recency_ts TIMESTAMPTZ;

UPDATE runs SET recency_ts = h.raised
FROM (
    SELECT source_path, byte_offset, ts,
        max(ts) OVER (PARTITION BY source_path ORDER BY byte_offset
                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS raised
    FROM runs WHERE source = 'history'
) h
WHERE h.raised > h.ts AND runs.source = 'history' AND runs.source_path = h.source_path
  AND runs.byte_offset = h.byte_offset;
