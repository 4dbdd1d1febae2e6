"""The `smaps` collector (off by default): per-app proportional set size (PSS)."""
