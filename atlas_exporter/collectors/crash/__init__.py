"""The `crash` collector: crash reports, crash signals, OOM kills and exits, per app."""
