"""Collectors: one package per `--collector.<name>` switch, and the only code that touches the OS.

Each package holds its readers, its pure parsers, its metric declarations and its source,
with platform files side by side (`source_linux.py`, `source_darwin.py`);
`atlas_exporter.platform` picks one. A source returns plain data (see `atlas_exporter.model`),
names apps only through the resolver, and turns OS errors into skips and counts at its boundary.
"""
