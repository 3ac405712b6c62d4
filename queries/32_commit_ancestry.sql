-- The commit graph beyond "at": which branches contain a commit, and how far one
-- commit is behind or ahead of another (git rev-list --left-right --count, in SQL).

-- commit_ancestry(shas): for every start sha in the list, itself and all its ancestors.
CREATE OR REPLACE MACRO commit_ancestry(starts) AS TABLE
WITH RECURSIVE a(start, sha) AS (
    SELECT s, s FROM (SELECT unnest(starts) AS s)
    UNION
    SELECT a.start, e.parent FROM a JOIN git_edges e ON e.child = a.sha
)
SELECT start, sha FROM a;
