-- One row per known host: what puppet last did there and whether it matches the
-- host's current configuration. APPLIED and HEALTHY follow the contract exactly:
--   applied  Y  override present, latest run succeeded, its override_sha = current one
--            N  latest run failed, or its override_sha differs from the current one
--            -  no override now and the latest successful run applied none
--            ?  no run data (or an override whose hash could not be read)
--   healthy  Y  applied is Y or - and the worker was active within the last hour
--            N  otherwise;  - when there is no worker-activity data for the host
-- The current override is the one seen at the last successful contact; a host never
-- contacted is judged by what its latest run read.
CREATE OR REPLACE VIEW host_state AS
WITH hosts AS (
    SELECT host FROM runs UNION SELECT host FROM observations
), joined AS (
    SELECT
        h.host,
        lr.host IS NOT NULL                                   AS has_runs,
        lr.role AS run_role, lr.os AS run_os,
        lr.git_sha, lr.ts, lr.success, lr.exit_code, lr.stage, lr.run_id, lr.git_branch,
        lr.override_sha                                       AS run_override_sha,
        ls.git_sha AS ok_sha, ls.ts AS ok_ts, ls.override_sha AS ok_override_sha,
        ls.vault_sha AS ok_vault_sha,
        c.host IS NOT NULL                                    AS contacted,
        c.override_present AS cur_override_present, c.override_sha AS cur_override_sha,
        c.vault_sha AS cur_vault_sha, c.role AS obs_role, c.os AS obs_os,
        c.observed_at AS last_seen,
        o.reachable, o.error AS last_error, o.observed_at AS last_attempt,
        a.host IS NOT NULL AS has_activity, a.last_active, a.quarantined_until
    FROM hosts h
    LEFT JOIN latest_run lr USING (host)
    LEFT JOIN latest_success ls USING (host)
    LEFT JOIN latest_contact c USING (host)
    LEFT JOIN latest_observation o USING (host)
    LEFT JOIN latest_activity a USING (host)
), judged AS (
    SELECT *,
        CASE WHEN contacted THEN coalesce(cur_override_present, cur_override_sha IS NOT NULL)
             ELSE run_override_sha IS NOT NULL END            AS override_present,
        CASE WHEN contacted THEN cur_override_sha ELSE run_override_sha END AS override_now
    FROM joined
), applied AS (
    SELECT *,
        CASE
            WHEN NOT has_runs THEN '?'
            WHEN NOT success THEN 'N'
            WHEN override_present AND override_now IS NULL THEN '?'
            WHEN override_present AND run_override_sha = override_now THEN 'Y'
            WHEN override_present THEN 'N'
            WHEN ok_override_sha IS NULL THEN '-'
            ELSE 'N'
        END AS applied
    FROM judged
)
SELECT
    host,
    coalesce(run_role, obs_role)                             AS role,
    coalesce(obs_os, run_os)                                 AS os,
    git_sha                                                  AS pp_sha,
    ts                                                       AS pp_ts,
    success                                                  AS pp_success,
    applied,
    CASE
        WHEN NOT has_activity THEN '-'
        WHEN applied IN ('Y', '-') AND last_active >= now() - INTERVAL 1 HOUR
             AND (quarantined_until IS NULL OR quarantined_until <= now()) THEN 'Y'
        ELSE 'N'
    END                                                      AS healthy,
    last_seen,
    reachable,
    -- beyond the contract: what an operator asks next
    exit_code                                                AS pp_exit_code,
    stage                                                    AS pp_stage,
    git_branch                                               AS pp_branch,
    CAST(epoch(now()) - epoch(ts) AS BIGINT)                 AS pp_age_s,
    ok_sha                                                   AS last_ok_sha,
    ok_ts                                                    AS last_ok_ts,
    override_present,
    override_now                                             AS override_sha,
    run_override_sha                                         AS applied_override_sha,
    cur_vault_sha                                            AS vault_sha,
    ok_vault_sha                                             AS applied_vault_sha,
    last_active                                              AS worker_last_active,
    quarantined_until,
    last_attempt,
    last_error,
    run_id                                                   AS pp_run_id
FROM applied;
