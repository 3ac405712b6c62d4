-- Analytics: branch tips of the puppet repository (so "which branches contain a
-- commit" is a graph walk in SQL), and where the commits came from.
CREATE TABLE git_refs (
    name       VARCHAR PRIMARY KEY,   -- 'main', 'origin/main', ... (refs/heads/ and refs/remotes/ stripped)
    sha        VARCHAR NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Every change of a branch tip seen by `ingest-git`, kept for history.
CREATE TABLE git_ref_history (
    name       VARCHAR NOT NULL,
    sha        VARCHAR,               -- NULL: the branch was deleted
    seen_at    TIMESTAMPTZ NOT NULL
);

ALTER TABLE git_commits ADD COLUMN author VARCHAR;
ALTER TABLE git_commits ADD COLUMN loaded_at TIMESTAMPTZ;

-- Each Taskcluster fetch: when, which pool, how many workers matched a host.
CREATE TABLE worker_fetches (
    fetched_at TIMESTAMPTZ NOT NULL,
    root_url   VARCHAR NOT NULL,
    pool       VARCHAR NOT NULL,
    workers    INTEGER NOT NULL,
    matched    INTEGER NOT NULL
);
