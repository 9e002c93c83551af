"""The jobkit library core: pools, jobs, output streams. Knows nothing of HTTP or terminals."""
