-- One row per commit in the graph: the branches (git_refs) whose tip contains it.
CREATE OR REPLACE VIEW commit_branches AS
WITH anc AS (
    SELECT start, sha FROM commit_ancestry((SELECT list(DISTINCT sha) FROM git_refs))
)
SELECT c.sha, list(DISTINCT r.name ORDER BY r.name) FILTER (WHERE r.name IS NOT NULL) AS branches
FROM git_commits c
LEFT JOIN anc ON anc.sha = c.sha
LEFT JOIN git_refs r ON r.sha = anc.start
GROUP BY c.sha;
