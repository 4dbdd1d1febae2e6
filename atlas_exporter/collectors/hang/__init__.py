"""The `hang` collector: processes stuck in uninterruptible wait, per app (Linux)."""
