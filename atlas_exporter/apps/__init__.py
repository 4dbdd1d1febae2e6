"""Apps: pure logic that names processes as applications and keeps per-app totals."""
