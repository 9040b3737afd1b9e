-- Expand (issue 13, part 1): history_partition_create_v2, 0029's function with the DEFAULT
-- partition locked against inserts before its strays move. Once runs move (0030), a run ending
-- on a day that has no partition yet lands in DEFAULT: one that committed between 0029's
-- move of the strays and its ATTACH made the ATTACH fail ("updated partition constraint for
-- default partition would be violated"; seen with a worker draining while the leader made
-- today's partition). SHARE ROW EXCLUSIVE stops inserts into DEFAULT only; its readers (every
-- runs_all read) go on until the ATTACH itself, which needs ACCESS EXCLUSIVE on DEFAULT for
-- the instant of the attach and commit. The caller sets lock_timeout, as for 0029's.
-- 0029's function stays as it was: the previous release calls it.

CREATE FUNCTION pgsched.history_partition_create_v2(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    part text := 'runs_history_' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'pgsched.history_partition_create_v2: day must be a date, got NULL' USING ERRCODE = '22023';
    END IF;
    IF to_regclass(format('pgsched.%I', part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    LOCK TABLE pgsched.runs_history_default IN SHARE ROW EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE pgsched.%I (LIKE pgsched.runs_history)', part);
    EXECUTE format('ALTER TABLE pgsched.%I ADD CONSTRAINT %I CHECK (finished_at >= %L AND finished_at < %L)',
                   part, part || '_range', low, high);  -- lets ATTACH skip its scan of the new table
    EXECUTE format('WITH strays AS (DELETE FROM pgsched.runs_history_default WHERE finished_at >= $1 AND finished_at < $2 RETURNING *)
                    INSERT INTO pgsched.%I SELECT * FROM strays', part) USING low, high;
    EXECUTE format('ALTER TABLE pgsched.runs_history ATTACH PARTITION pgsched.%I FOR VALUES FROM (%L) TO (%L)',
                   part, low, high);
    EXECUTE format('ALTER TABLE pgsched.%I DROP CONSTRAINT %I', part, part || '_range');
    RETURN true;
END;
$$;
