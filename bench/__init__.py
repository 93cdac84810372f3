"""Benchmarks: each measures a figure and its baseline in the same run, and reports the ratio."""
