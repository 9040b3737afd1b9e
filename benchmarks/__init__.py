"""Standalone benchmarks, one per question: `python -m benchmarks.<name>` from the repo root."""
