"""A small Django project for tests/test_contrib_django.py, on the suite's PostgreSQL."""
