"""Integrations with other frameworks, each importing its framework only when used."""
