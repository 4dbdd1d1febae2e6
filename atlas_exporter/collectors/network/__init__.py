"""The `network` collector: per-app TCP bytes from sock_diag (Linux) or nettop (macOS)."""
