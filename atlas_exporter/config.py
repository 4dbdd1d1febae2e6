"""The YAML configuration: typed options with strict validation.

Every key is optional. A problem is reported as `ConfigError("FILE: key.path: reason")`;
every problem in the file is listed, one per line. Every number must be finite and within
a sane range (intervals from 0.1 s to a day); files must be regular files under a size cap
(`read_regular_file`), and YAML nesting is limited to `MAX_YAML_DEPTH` levels.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, key and reason."""


MAX_CONFIG_BYTES = 1024 * 1024  # a configuration or web configuration file
MAX_YAML_DEPTH = 64  # nested mappings and lists
MIN_INTERVAL_SECONDS = 0.1  # anything shorter would spin a watcher thread
MAX_SECONDS = 86400.0 * 366  # intervals, thresholds, timeouts and retention: at most about a year
DEFAULT_CSV_PATH = "~/.atlas_agent/data/app_resources.csv"
DEFAULT_CSV_MAX_BYTES = 10 * 1024 * 1024
# matchers of an `apps` rule, in the order they are tried; `parent` (the parent process's app
# name) last, because it may need the parent named first
MATCH_FIELDS = ("comm", "exe", "cmdline", "user", "cgroup", "parent")


class RuleMatch(Protocol):
    def group(self, index: int = 0) -> str: ...

    def groups(self) -> tuple[str | None, ...]: ...

    def groupdict(self) -> dict[str, str | None]: ...


class RulePattern(Protocol):
    """A compiled `apps` regex: RE2 (linear time) in the exporter; `re` works the same in tests."""

    pattern: str
    groups: int
    groupindex: Any  # name -> group number

    def search(self, text: str) -> RuleMatch | None: ...


def compile_rule_regex(text: str) -> RulePattern:
    """Compile a user's regex with RE2, whose matching time is linear in the input.

    RE2 has no backreferences or lookaround, as in Prometheus's relabelling. Raises
    ValueError with RE2's reason when it cannot compile the pattern.
    """
    try:
        import re2  # google-re2
    except ImportError:
        raise ValueError("the google-re2 package is not installed (pip install google-re2)") from None
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own copy of the error to stderr
    try:
        pattern: RulePattern = re2.compile(text, options)
        return pattern
    except re2.error as err:
        reason = err.args[0] if err.args else err
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None
    except (TypeError, UnicodeError) as err:
        raise ValueError(str(err)) from None


@dataclass(frozen=True, slots=True)
class NamingRule:
    """One `apps` entry. Every given matcher must match (RE2 regexes, `search` semantics).

    `name` is a template: `{comm}`, `{exe}` (basename), `{exe_path}`, `{user}`,
    `{unit}` (cgroup unit name), `{parent}` (the parent process's app) and the matchers'
    named or numbered regex groups (`{1}`, `{service}`).
    """

    name: str
    comm: RulePattern | None = None
    exe: RulePattern | None = None
    cmdline: RulePattern | None = None
    user: RulePattern | None = None
    cgroup: RulePattern | None = None
    parent: RulePattern | None = None


@dataclass(frozen=True, slots=True)
class HangOptions:
    threshold_seconds: float = 30.0
    check_interval_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class CrashOptions:
    report_dirs: tuple[str, ...] = ()  # extra crash report folders (macOS DiagnosticReports, /var/crash)
    state_file: str | None = None  # where seen macOS reports are remembered across restarts


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    sample_interval_seconds: float = 1.0
    all_namespaces: bool = False  # Linux: also dump sockets of other network namespaces (root)
    nettop_timeout_seconds: float = 5.0  # macOS


@dataclass(frozen=True, slots=True)
class CsvOptions:
    enabled: bool = False
    path: str = DEFAULT_CSV_PATH
    interval_seconds: float = 60.0
    top: int = 20
    max_bytes: int = DEFAULT_CSV_MAX_BYTES
    backup_count: int = 5


@dataclass(frozen=True, slots=True)
class Config:
    apps: tuple[NamingRule, ...] = ()
    max_apps: int = 500
    retention_seconds: float = 3600.0  # how long an app with no processes stays exported
    snapshot_max_age_seconds: float = 1.0  # scrapes closer than this share one snapshot
    hang: HangOptions = field(default_factory=HangOptions)
    crash: CrashOptions = field(default_factory=CrashOptions)
    network: NetworkOptions = field(default_factory=NetworkOptions)
    csv: CsvOptions = field(default_factory=CsvOptions)
    source: str = "<defaults>"


_TOP_KEYS = {"apps", "max_apps", "retention_seconds", "snapshot_max_age_seconds", "hang", "crash", "network", "csv"}


class _Checker:
    """Collects every problem found while converting the raw YAML tree."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def fail(self, path: str, reason: str) -> None:
        self.problems.append(f"{self.source}: {path}: {reason}")

    def mapping(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path or "(top level)", f"must be a mapping, got {_kind(value)}")
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key not in allowed:
                hint = _closest(str(key), allowed)
                self.fail(f"{path}.{key}" if path else str(key),
                          "unknown key" + (f" (did you mean '{hint}'?)" if hint else ""))
                continue
            out[key] = item
        return out

    def number(self, raw: dict[str, Any], key: str, path: str, default: float, *,
               minimum: float = 0.0, integer: bool = False, exclusive: bool = True,
               maximum: float = MAX_SECONDS) -> Any:
        if key not in raw:
            return default
        value = raw[key]
        where = f"{path}.{key}" if path else key
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            self.fail(where, f"must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
            return default
        if not math.isfinite(value):
            self.fail(where, f"must be a finite number, got {value}")
            return default
        if value < minimum or (exclusive and value == minimum):
            self.fail(where, f"must be {'greater than' if exclusive else 'at least'} {minimum:g}, got {value:g}")
            return default
        if value > maximum:
            self.fail(where, f"must be at most {maximum:g}, got {value:g}")
            return default
        return value

    def interval(self, raw: dict[str, Any], key: str, path: str, default: float) -> Any:
        """A period a thread waits between passes, or a timeout: from 0.1 s to about a year."""
        return self.number(raw, key, path, default, minimum=MIN_INTERVAL_SECONDS, exclusive=False)

    def boolean(self, raw: dict[str, Any], key: str, path: str, default: bool) -> bool:
        if key not in raw:
            return default
        value = raw[key]
        if not isinstance(value, bool):
            self.fail(f"{path}.{key}", f"must be true or false, got {_kind(value)}")
            return default
        return value

    def string(self, raw: dict[str, Any], key: str, path: str, default: str | None) -> Any:
        if key not in raw:
            return default
        if not isinstance(raw[key], str) or not raw[key]:
            self.fail(f"{path}.{key}", f"must be a non-empty string, got {_kind(raw[key])}")
            return default
        return raw[key]

    def strings(self, raw: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
        if key not in raw:
            return ()
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f"{path}.{key}", "must be a list of non-empty strings")
            return ()
        return tuple(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return found[0] if found else None


def _rule(check: _Checker, raw: Any, index: int) -> NamingRule | None:
    path = f"apps[{index}]"
    entry = check.mapping(raw, path, {"name", *MATCH_FIELDS})
    if not entry:
        if isinstance(raw, dict):
            check.fail(path, "a rule needs a name and at least one of " + ", ".join(MATCH_FIELDS))
        return None
    name = check.string(entry, "name", path, None)
    if name is None and "name" not in entry:
        check.fail(f"{path}.name", "missing (every rule needs a name template)")
    label = f" in rule '{name}'" if name else ""
    patterns: dict[str, RulePattern] = {}
    for key in MATCH_FIELDS:
        if key not in entry:
            continue
        text = check.string(entry, key, path, None)
        if text is None:
            continue
        try:
            patterns[key] = compile_rule_regex(text)
        except ValueError as err:
            check.fail(f"{path}.{key}", f"bad regular expression {text!r}{label} (RE2 syntax): {err}")
    if not patterns and not any(k in entry for k in MATCH_FIELDS):
        check.fail(path, "a rule needs at least one of " + ", ".join(MATCH_FIELDS))
    if name is None or len(patterns) != sum(k in entry for k in MATCH_FIELDS):
        return None
    try:
        _check_template(name, patterns)
    except ValueError as err:
        check.fail(f"{path}.name", str(err))
        return None
    return NamingRule(name=name, **patterns)


_TEMPLATE_FIELD = re.compile(r"{([^{}]*)}")
TEMPLATE_KEYS = {"comm", "exe", "exe_path", "user", "unit", "cgroup", "parent"}


def _check_template(name: str, patterns: dict[str, RulePattern]) -> None:
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        raise ValueError(f"app names cannot contain spaces or control characters: {name!r}")
    groups: set[str] = set()
    for pattern in patterns.values():
        groups |= set(pattern.groupindex)
    # numbered fields come from the first matcher (in MATCH_FIELDS order) that has groups
    numbered = next((patterns[k].groups for k in MATCH_FIELDS if k in patterns and patterns[k].groups), 0)
    for key in _TEMPLATE_FIELD.findall(name):
        if key in TEMPLATE_KEYS or key in groups:
            continue
        if key.isdigit() and int(key) <= numbered:
            continue
        raise ValueError(f"unknown template field '{{{key}}}' (use one of {', '.join(sorted(TEMPLATE_KEYS))},"
                         " or a regex group of the first matcher with groups)")


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Turn a parsed YAML tree into a `Config`, or raise `ConfigError` listing every problem."""
    check = _Checker(source)
    top = check.mapping(raw, "", _TOP_KEYS) if raw is not None else {}
    rules: list[NamingRule] = []
    if "apps" in top:
        if not isinstance(top["apps"], list):
            check.fail("apps", f"must be a list of rules, got {_kind(top['apps'])}")
        else:
            for i, item in enumerate(top["apps"]):
                rule = _rule(check, item, i)
                if rule is not None:
                    rules.append(rule)
    hang_raw = check.mapping(top.get("hang"), "hang", {"threshold_seconds", "check_interval_seconds"})
    hang = HangOptions(
        threshold_seconds=check.interval(hang_raw, "threshold_seconds", "hang", 30.0),
        check_interval_seconds=check.interval(hang_raw, "check_interval_seconds", "hang", 5.0),
    )
    crash_raw = check.mapping(top.get("crash"), "crash", {"report_dirs", "state_file"})
    crash = CrashOptions(
        report_dirs=check.strings(crash_raw, "report_dirs", "crash"),
        state_file=check.string(crash_raw, "state_file", "crash", None),
    )
    net_raw = check.mapping(top.get("network"), "network",
                            {"sample_interval_seconds", "all_namespaces", "nettop_timeout_seconds"})
    network = NetworkOptions(
        sample_interval_seconds=check.interval(net_raw, "sample_interval_seconds", "network", 1.0),
        all_namespaces=check.boolean(net_raw, "all_namespaces", "network", False),
        nettop_timeout_seconds=check.interval(net_raw, "nettop_timeout_seconds", "network", 5.0),
    )
    csv_raw = check.mapping(top.get("csv"), "csv",
                            {"enabled", "path", "interval_seconds", "top", "max_bytes", "backup_count"})
    csv = CsvOptions(
        enabled=check.boolean(csv_raw, "enabled", "csv", False),
        path=check.string(csv_raw, "path", "csv", DEFAULT_CSV_PATH),
        interval_seconds=check.interval(csv_raw, "interval_seconds", "csv", 60.0),
        top=check.number(csv_raw, "top", "csv", 20, minimum=1, integer=True, exclusive=False, maximum=100_000),
        max_bytes=check.number(csv_raw, "max_bytes", "csv", DEFAULT_CSV_MAX_BYTES, minimum=1024,
                               integer=True, exclusive=False, maximum=1 << 40),
        backup_count=check.number(csv_raw, "backup_count", "csv", 5, integer=True, exclusive=False,
                                  maximum=1000),
    )
    config = Config(
        apps=tuple(rules),
        max_apps=check.number(top, "max_apps", "", 500, minimum=1, integer=True, exclusive=False,
                              maximum=1_000_000),
        retention_seconds=check.number(top, "retention_seconds", "", 3600.0, exclusive=False),
        snapshot_max_age_seconds=check.number(top, "snapshot_max_age_seconds", "", 1.0, exclusive=False),
        hang=hang,
        crash=crash,
        network=network,
        csv=csv,
        source=source,
    )
    if check.problems:
        raise ConfigError("\n".join(check.problems))
    return config


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking, so a FIFO or a device (`/dev/zero`) is refused at once instead
    of hanging or filling memory; raises OSError with a reason that fits on one line.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if (
                stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else "a socket" if stat.S_ISSOCK(
                st.st_mode) else "not a regular file"
            raise OSError(errno.EINVAL, f"is {kind}, not a regular file" if kind.startswith("a ") else kind)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


@functools.cache
def _depth_limited_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """The safe loader, with a bound on how deep mappings and lists may nest."""

        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self._depth += 1
            try:
                if self._depth > MAX_YAML_DEPTH:
                    peek: Callable[[], yaml.events.Event] = self.peek_event  # untyped in the yaml stubs
                    mark = peek().start_mark  # the pure-Python loader's: a yaml.error.Mark
                    raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                      mark if isinstance(mark, yaml.error.Mark) else None)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    # YAML 1.2 (and Prometheus's own config files) read 1e-9 as a number; YAML 1.1 as a string
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def read_yaml_file(path: str | os.PathLike[str], error: type[Exception]) -> Any:
    """Parse a YAML file; every failure is an `error` whose one-line message names the file."""
    name = str(path)
    try:
        text = read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise error(f"{name}: file not found") from None
    except IsADirectoryError:
        raise error(f"{name}: is a directory, not a file") from None
    except UnicodeDecodeError as err:
        raise error(f"{name}: cannot read: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise error(f"{name}: cannot read: {err.strerror or err}") from None
    import yaml  # only when a file is given: the exporter with defaults never pays for it

    try:
        return yaml.load(text, Loader=_depth_limited_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{name}: {where}: YAML syntax error: {problem}") from None
    except RecursionError:
        raise error(f"{name}: YAML syntax error: nested too deeply") from None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a YAML file; None gives the built-in defaults."""
    if path is None:
        return Config()
    return parse_config(read_yaml_file(path, ConfigError), str(path))
