"""Exporter: the Prometheus collector, the HTTP server and the status page.

Scrapes: `runtime.Exporter` assembles sources, apps and collectors; `snapshot` takes one snapshot
per scrape; `collector.AtlasCollector` runs each sub-collector in isolation; `exposition` writes
the text format; `metrics` declares the exporter's own metrics; `status` renders the page at `/`.

HTTP: `server.start_server` binds (`listen`) and runs one event loop; `connections` caps and
accounts for connections; `handler` answers the requests of one connection (`http_request`
parses their heads). The web config file: `webconfig` validates it, `websettings` loads it and
builds what a reload replaces, from `tls` (the SSL context) and `basicauth` (bcrypt checks).
"""
