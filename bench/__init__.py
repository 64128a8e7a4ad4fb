"""Benchmarks: each starts what it measures and prints a table with ratios measured in the same run."""
