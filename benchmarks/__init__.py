"""Benchmarks that print figures; run them as modules (`python -m benchmarks.http_overhead`)."""
