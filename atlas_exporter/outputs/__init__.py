"""Outputs beyond /metrics (the CSV mirror)."""
