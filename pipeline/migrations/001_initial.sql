-- The contract's tables (runs, observations, rejects) plus the loader's cursors.
CREATE TABLE runs (
    host            VARCHAR NOT NULL,      -- the mirror directory name: the name operators use
    run_id          VARCHAR NOT NULL,      -- from the record, or derived from host + parsed content
    ts              TIMESTAMPTZ NOT NULL,  -- when the run finished
    started_at      TIMESTAMPTZ,
    duration_s      INTEGER,
    success         BOOLEAN NOT NULL,
    exit_code       INTEGER,
    role            VARCHAR,
    git_repo        VARCHAR,
    git_branch      VARCHAR,
    git_sha         VARCHAR,
    git_dirty       BOOLEAN,
    override_sha    VARCHAR,
    override_path   VARCHAR,
    vault_sha       VARCHAR,
    vault_path      VARCHAR,
    stage           VARCHAR,
    attempt         INTEGER,
    os              VARCHAR,
    reported_host   VARCHAR,               -- the record's own `host` field (hostname -f)
    wrapper_version VARCHAR,
    schema_version  INTEGER,
    source          VARCHAR NOT NULL,      -- history | state_file | legacy_summary
    source_path     VARCHAR,
    byte_offset     BIGINT,
    loaded_at       TIMESTAMPTZ NOT NULL,
    extra           JSON                   -- fields this version does not know, kept verbatim
);

CREATE TABLE observations (
    host             VARCHAR NOT NULL,
    observed_at      TIMESTAMPTZ NOT NULL,
    reachable        BOOLEAN NOT NULL,
    error            VARCHAR,
    os               VARCHAR,
    role             VARCHAR,
    override_present BOOLEAN,
    override_sha     VARCHAR,
    vault_sha        VARCHAR,
    override_repo    VARCHAR,
    override_branch  VARCHAR,
    vault_status     VARCHAR,
    uptime_s         BIGINT,
    source_path      VARCHAR,
    byte_offset      BIGINT,
    loaded_at        TIMESTAMPTZ NOT NULL,
    extra            JSON
);

CREATE TABLE rejects (
    host        VARCHAR,
    source_path VARCHAR NOT NULL,
    byte_offset BIGINT NOT NULL,
    reason      VARCHAR NOT NULL,
    line        BLOB NOT NULL,
    rejected_at TIMESTAMPTZ NOT NULL
);

-- How far each input file has been loaded. `head_sha` fingerprints the first
-- bytes so a replaced (not appended) file is noticed and re-read from 0.
CREATE TABLE load_cursors (
    source_path VARCHAR PRIMARY KEY,
    host        VARCHAR NOT NULL,
    byte_offset BIGINT NOT NULL,
    head_sha    VARCHAR,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Worker activity (filled by the worker-activity ingest); HEALTHY reads it.
CREATE TABLE worker_activity (
    host              VARCHAR NOT NULL,
    observed_at       TIMESTAMPTZ NOT NULL,
    worker_pool       VARCHAR,
    worker_id         VARCHAR,
    last_active       TIMESTAMPTZ,
    quarantined_until TIMESTAMPTZ,
    extra             JSON
);

-- The puppet repository's commit graph (filled by `ingest --git`); rollout
-- counts descendants of a target as "at" it once the graph is known.
CREATE TABLE git_commits (
    sha         VARCHAR PRIMARY KEY,
    parents     VARCHAR[] NOT NULL,
    author_time TIMESTAMPTZ,
    commit_time TIMESTAMPTZ,
    subject     VARCHAR
);

-- Small facts about the warehouse itself (e.g. that `demo` made it).
CREATE TABLE meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR
);
