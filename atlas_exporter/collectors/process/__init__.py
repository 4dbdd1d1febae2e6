"""The `process` collector: the process table readers and the per-app process metrics."""
