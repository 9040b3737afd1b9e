-- 0030's trigger, where it was created after 0045, moves through v2 (see 0045).
CREATE OR REPLACE TRIGGER runs_to_history
    AFTER UPDATE ON pgsched.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_to_history_v2();
