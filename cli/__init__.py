"""The `pgsched` command line (shipped as ``pgsched.cli``)."""
