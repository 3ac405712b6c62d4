-- rollout_first_seen(target): when the fleet first ran the target, or a descendant of
-- it once the commit graph is known (the start of "time to converge").
CREATE OR REPLACE MACRO rollout_first_seen(target) AS (
    SELECT min(ts) FROM runs WHERE git_sha IN (SELECT sha FROM commits_at(target))
);
