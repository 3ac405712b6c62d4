-- The commits that count as "at" a target commit: the target itself and, once the
-- commit graph is loaded (git_commits), every descendant of it.
CREATE OR REPLACE VIEW git_edges AS
SELECT sha AS child, unnest(parents) AS parent FROM git_commits;

CREATE OR REPLACE MACRO commits_at(target) AS TABLE
WITH RECURSIVE d(sha) AS (
    SELECT lower(target)
    UNION
    SELECT e.child FROM git_edges e JOIN d ON e.parent = d.sha
)
SELECT sha FROM d;
