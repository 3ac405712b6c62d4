-- How many hosts of a group are in each rollout status: the one definition that
-- rollout_summary, rollout_by_role and the in-depth `fleetstate rollout` all count with.
-- An aggregate macro: use it in a SELECT over rollout rows, e.g.
--   SELECT role, unnest(status_counts(status)) FROM rollout(?) GROUP BY role
CREATE OR REPLACE MACRO status_counts(status) AS {
    'hosts': count(*),
    'converged': count(*) FILTER (WHERE status = 'converged'),
    'failed': count(*) FILTER (WHERE status = 'failed'),
    'pending': count(*) FILTER (WHERE status = 'pending'),
    'regressed': count(*) FILTER (WHERE status = 'regressed'),
    'unreported': count(*) FILTER (WHERE status = 'unreported'),
    -- the contract's converged / hosts x 100, not rounded (reports round what they show)
    'pct_converged': 100.0 * count(*) FILTER (WHERE status = 'converged') / nullif(count(*), 0)
};
