"""Exporter: the Prometheus collector and the status page.

`runtime.Exporter` assembles sources, apps and collectors; `snapshot` takes one snapshot per
scrape; `collector.AtlasCollector` runs each sub-collector in isolation; `exposition` writes the
text format; `metrics` declares the exporter's own metrics (the HTTP server's included);
`status` renders the page at `/`. The HTTP server that serves them is `atlas_exporter.web`.
"""
