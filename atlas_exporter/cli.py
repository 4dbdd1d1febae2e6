"""The `atlas-exporter` command line (node_exporter conventions).

Bad input (an unknown flag, a bad file, a port in use) gets a one-line error on stderr and
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from atlas_exporter import __version__
from atlas_exporter.config import ConfigError, load_config
from atlas_exporter.platform import COLLECTORS, PLATFORM_NAME

if TYPE_CHECKING:
    from atlas_exporter.exporter.runtime import Exporter
    from atlas_exporter.web.server import RunningServer
    from atlas_exporter.web.webconfig import WebConfig

DEFAULT_PORT = 9858
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
PRIMING_SECONDS = 1.0
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
              "error": logging.ERROR}

log = logging.getLogger("atlas_exporter")


class UsageError(Exception):
    """A bad command line, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="atlas-exporter",
        description="Prometheus exporter of per-application CPU, memory, threads, open files, disk I/O, "
                    "network bytes, crashes and hangs.",
        epilog="Docs: README.md. Every flag has a default; with no flags the exporter serves "
               f"http://0.0.0.0:{DEFAULT_PORT}/metrics.",
        allow_abbrev=False,
    )
    web = parser.add_argument_group("web")
    web.add_argument("--web.listen-address", dest="listen_address", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                     help=f"address to listen on for HTTP (default {DEFAULT_LISTEN}: every interface; "
                          "use 127.0.0.1:PORT for loopback only)")
    web.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics", metavar="PATH",
                     help="path under which to expose metrics (default /metrics)")
    web.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                     help="TLS and basic auth configuration, in the Prometheus exporter-toolkit format")
    conf = parser.add_argument_group("configuration")
    conf.add_argument("--config.file", dest="config_file", metavar="FILE",
                      help="YAML configuration (app naming rules, max_apps, hang, crash, network, csv)")
    conf.add_argument("--check-config", action="store_true",
                      help="validate --config.file (and --web.config.file) and exit: 0 when valid")
    conf.add_argument("--once", action="store_true",
                      help="take one snapshot after a short priming interval, print the metrics to stdout, exit")
    conf.add_argument("--self-check", dest="self_check", action="store_true",
                      help="compare what the exporter reads with psutil and ps (and on macOS nettop and the "
                           "DiagnosticReports folders) for the top apps and itself, print a table, and exit: "
                           "0 when all agree within the printed tolerances, 1 otherwise; needs no root")
    conf.add_argument("--path.procfs", dest="procfs", default="/proc", metavar="PATH",
                      help="procfs mountpoint (default /proc; e.g. /host/proc in a container)")
    coll = parser.add_argument_group("collectors")
    for name, default in COLLECTORS.items():
        coll.add_argument(f"--collector.{name}", dest=f"collector_{name}", action="store_true",
                          default=default, help=f"enable the {name} collector (default: "
                                                f"{'enabled' if default else 'disabled'})")
        coll.add_argument(f"--no-collector.{name}", dest=f"collector_{name}", action="store_false",
                          help=argparse.SUPPRESS)
    other = parser.add_argument_group("other")
    other.add_argument("--log.level", dest="log_level", default="info", choices=sorted(LOG_LEVELS),
                       metavar="LEVEL", help="debug, info, warn or error (default info)")
    other.add_argument("--version", action="version",
                       version=f"atlas-exporter {__version__} (python {sys.version.split()[0]}, {PLATFORM_NAME})")
    return parser


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('ts=%(asctime)s level=%(levelname)s source=%(name)s msg="%(message)s"',
                                           "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS[level])


def _fail(message: str, code: int = 1) -> int:
    for line in message.splitlines() or [message]:
        print(f"atlas-exporter: error: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        return _fail(f"{err} (see --help)", 2)
    setup_logging(args.log_level)
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        # Until serving starts, a SIGHUP is logged, never fatal.
        signal.signal(signal.SIGHUP, lambda *_: log.info("SIGHUP while starting: ignored"))
    try:
        return run(args)
    except KeyboardInterrupt:
        return 0
    except (ConfigError, UsageError) as err:
        return _fail(str(err))


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config_file)
    web_config = None
    if args.web_config:
        from atlas_exporter.web.webconfig import WebConfigError
        from atlas_exporter.web.websettings import load_web_config

        try:
            web_config = load_web_config(args.web_config)
        except WebConfigError as err:
            return _fail(str(err))
    from atlas_exporter.web.listen import ServerError, parse_listen_address

    try:
        parse_listen_address(args.listen_address)
    except ServerError as err:
        return _fail(f"--web.listen-address: {err}", 2)
    if args.check_config:
        what = args.config_file or "built-in defaults"
        print(f"atlas-exporter: configuration OK: {what} ({len(config.apps)} naming rules)")
        return 0
    if not args.telemetry_path.startswith("/") or args.telemetry_path == "/":
        return _fail(f"--web.telemetry-path: must start with '/' and not be '/', got {args.telemetry_path!r}", 2)
    procfs = Path(args.procfs)
    if PLATFORM_NAME == "linux" and not (procfs / "stat").is_file():
        return _fail(f"--path.procfs: {procfs} is not a procfs mount (no {procfs / 'stat'})", 2)
    if args.self_check:
        from atlas_exporter.selfcheck import check as selfcheck

        return selfcheck.main(config, procfs)
    enabled = {name for name in COLLECTORS if getattr(args, f"collector_{name}")}

    from atlas_exporter.exporter.runtime import Exporter
    from atlas_exporter.outputs.csv_mirror import CsvError

    try:
        exporter = Exporter(config, procfs=procfs, enabled=enabled, telemetry_path=args.telemetry_path)
    except CsvError as err:
        return _fail(str(err))
    exporter.start()
    try:
        if args.once:
            exporter.snapshotter.get()
            time.sleep(PRIMING_SECONDS)
            exporter.snapshotter.max_age_seconds = 0
            body, _ = exporter.render_metrics()
            sys.stdout.write(body.decode())
            sys.stdout.flush()
            return 0
        return serve(args, exporter, web_config)
    finally:
        exporter.stop()


def _file_digest(path: str | None) -> bytes | None:
    if path is None:
        return None
    import hashlib

    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read(16 << 20)).digest()
    except OSError:
        return None


def reload_on_hangup(args: argparse.Namespace, server: RunningServer, config_digest: bytes | None) -> None:
    """SIGHUP: reread --web.config.file (certificates, users, headers) and use it for new requests;
    report whether --config.file changed, since that one is applied at a restart. Never fatal."""
    from atlas_exporter.web.webconfig import WebConfigError
    from atlas_exporter.web.websettings import load_web_config

    if args.web_config:
        try:
            server.reload(load_web_config(args.web_config))
        except WebConfigError as err:
            log.error("SIGHUP: keeping the previous web config: %s", err)
        else:
            log.info("SIGHUP: reloaded the web config file %s", args.web_config)
    else:
        log.info("SIGHUP: no --web.config.file to reload")
    if args.config_file and _file_digest(args.config_file) != config_digest:
        try:
            load_config(args.config_file)
        except ConfigError as err:
            log.warning("SIGHUP: %s changed and is not valid: %s", args.config_file, err)
        else:
            log.warning("SIGHUP: %s changed; restart the exporter to apply it (only the web config is "
                        "reloaded)", args.config_file)


def serve(args: argparse.Namespace, exporter: Exporter, web_config: WebConfig | None) -> int:
    from atlas_exporter.web.connections import raise_open_files_limit
    from atlas_exporter.web.listen import ServerError
    from atlas_exporter.web.server import ServerMetrics, start_server
    from atlas_exporter.web.webconfig import WebConfigError

    config_digest = _file_digest(args.config_file)
    before, after = raise_open_files_limit()
    if after != before:
        log.debug("raised the open files limit (RLIMIT_NOFILE) from %d to %d", before, after)
    try:
        server = start_server(args.listen_address, args.telemetry_path, exporter.render_metrics,
                              exporter.render_status, web_config)
    except (ServerError, WebConfigError) as err:
        return _fail(str(err))
    exporter.registry.register(ServerMetrics(server))
    wake = threading.Event()
    pending: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        pending.append(signum)
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    host, port = server.address[:2]
    scheme = "https" if web_config is not None and web_config.tls is not None else "http"
    log.info("atlas-exporter %s listening on %s://%s:%s%s (collectors: %s)", __version__, scheme,
             f"[{host}]" if ":" in str(host) else host, port, args.telemetry_path,
             ", ".join(s.name for s in exporter.sources) or "none")
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    while True:
        wake.wait(1.0)
        wake.clear()
        while pending:
            signum = pending.pop(0)
            if signum == signal.SIGHUP:
                try:
                    reload_on_hangup(args, server, config_digest)
                except Exception as err:  # a reload never takes the exporter down
                    log.error("SIGHUP: reload failed: %s", err)
                continue
            log.info("received %s, shutting down", signal.Signals(signum).name)
            server.shutdown()
            return 0
        if not thread.is_alive():
            return _fail("HTTP server stopped unexpectedly")
