"""One controller per noun. Handlers parse, call the library (``pgsched.runs``,
``pgsched.jobs``, ``pgsched.app``), and shape the response; the logic is the library's."""
