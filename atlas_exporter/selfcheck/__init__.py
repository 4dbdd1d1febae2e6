"""`atlas-exporter --self-check`: the exporter's readings against independent tools.

`check` runs it, `references` reads psutil, ps, nettop and report folders independently,
`report` holds the tolerances and prints the table.
"""
