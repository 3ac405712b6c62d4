-- commit_distance(target, shas): for each sha, how many commits it lacks that the
-- target has (behind) and has that the target lacks (ahead). NULLs when either
-- commit is not in the graph.
CREATE OR REPLACE MACRO commit_distance(target, shas) AS TABLE
WITH anc AS (
    SELECT start, sha FROM commit_ancestry(list_distinct(list_append(shas, lower(target))))
), t AS (
    SELECT sha FROM anc WHERE start = lower(target)
), known AS (
    SELECT sha FROM git_commits
)
SELECT s.sha,
    CASE WHEN s.sha IN (SELECT sha FROM known) AND lower(target) IN (SELECT sha FROM known) THEN
        (SELECT count(*) FROM t WHERE t.sha NOT IN (SELECT sha FROM anc WHERE start = s.sha)) END
        AS behind,
    CASE WHEN s.sha IN (SELECT sha FROM known) AND lower(target) IN (SELECT sha FROM known) THEN
        (SELECT count(*) FROM anc WHERE start = s.sha AND anc.sha NOT IN (SELECT sha FROM t)) END
        AS ahead
FROM (SELECT DISTINCT unnest(shas) AS sha) s;
