"""The HTTP server behind `--web.*`: what serves /metrics and the status page.

`server.start_server` binds (`listen`) and runs one event loop; `connections` caps and accounts
for connections; `handler` answers the requests of one connection (`http_request` parses their
heads). The web config file (`--web.config.file`): `webconfig` validates it, `websettings` loads
it and builds what a reload replaces, from `tls` (the SSL context) and `basicauth` (bcrypt checks).
"""
