-- Helper views: each host's latest run, latest successful run and latest observations.
-- "Latest" is by the time the run finished; a history line wins a tie with the
-- same run seen in a state file.
CREATE OR REPLACE VIEW latest_run AS
SELECT * FROM runs
QUALIFY row_number() OVER (
    PARTITION BY host
    ORDER BY ts DESC, CASE source WHEN 'history' THEN 0 WHEN 'state_file' THEN 1 ELSE 2 END, run_id
) = 1;

CREATE OR REPLACE VIEW latest_success AS
SELECT * FROM runs WHERE success
QUALIFY row_number() OVER (
    PARTITION BY host
    ORDER BY ts DESC, CASE source WHEN 'history' THEN 0 WHEN 'state_file' THEN 1 ELSE 2 END, run_id
) = 1;

CREATE OR REPLACE VIEW latest_observation AS
SELECT * FROM observations
QUALIFY row_number() OVER (PARTITION BY host ORDER BY observed_at DESC) = 1;

-- the last time the collector reached the host: its current override and vault
CREATE OR REPLACE VIEW latest_contact AS
SELECT * FROM observations WHERE reachable
QUALIFY row_number() OVER (PARTITION BY host ORDER BY observed_at DESC) = 1;

CREATE OR REPLACE VIEW latest_activity AS
SELECT * FROM worker_activity
QUALIFY row_number() OVER (PARTITION BY host ORDER BY observed_at DESC) = 1;
