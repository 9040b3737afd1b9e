def test_schema_is_loaded_in_each_test_database(conn):
    assert conn.execute("SELECT count(*) FROM pgsched.runs").fetchone()[0] == 0
