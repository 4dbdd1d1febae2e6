"""Sources: the only code that touches the operating system.

Each source returns plain data (see `atlas_exporter.model`) and turns OS errors into
skips and counts at its boundary. Platform files come in pairs (`*_linux.py`,
`*_darwin.py`); `atlas_exporter.platform` picks one.
"""
