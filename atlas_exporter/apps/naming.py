"""Application names: configured rules first, then the process tree, then the default chain.

Pure logic: files are read only through the identity's injected `read_file`. This module holds
the rules and the helpers (steps 1 and 2); `naming_default` the default chain (steps 3-7), and
`naming_scripts` what interpreters and shell wrappers run.

`Namer.name(identity, parent)` returns what a person calls the app a process belongs to:
  1. the first configured rule that matches (comm, exe, cmdline, user, cgroup and parent regexes,
     RE2, linear time; inputs capped at `MAX_MATCH_CHARS`, rules at `RULES_BUDGET_SECONDS`);
  2. helpers join their parent's app: `multiprocessing` spawn and forkserver workers and its
     resource tracker, and crash handlers (`chrome_crashpad_handler`); a crash handler whose
     parent is a process manager is named by the folder it is installed in;
  3. a systemd service or app scope, suffixes stripped
     (`nginx.service` -> `nginx`, `app-gnome-firefox-1234.scope` -> `firefox`), except job
     runners (`cron.service`, `supervisor.service`), whose jobs are named by what they run;
  4. the outermost macOS `.app` bundle (filled in by the macOS source);
  5. for interpreters (python, node, java, ruby, perl, sh), what they run: `python -m pkg.mod` ->
     `pkg.mod`; a script by its name, a generic one (`main.py`, `index.js`, `manage.py`...) by its
     folder, relative paths resolved against the process's cwd; for node and its launchers (npm,
     npx, yarn, pnpm) the `name` in the nearest `package.json`; for `sh -c 'SCRIPT'`, the program
     the script runs (so a wrapper joins its child);
  6. the executable's name as it was started (a process title is cut at its first space:
     `npm start` -> `npm`);
  7. comm.
Names never hold whitespace or control characters: each run of them becomes one `_`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence

from atlas_exporter.apps.naming_default import (
    app_of_unit,
    default_name,
    interpreter_of,
    started_name,
    tidy_name,
    title_word,
    unit_of_cgroup,
)
from atlas_exporter.apps.naming_scripts import GENERIC_FOLDERS, PYTHON, python_module
from atlas_exporter.config import NamingRule
from atlas_exporter.model import ProcIdentity

log = logging.getLogger(__name__)

MAX_MATCH_CHARS = 65536  # a rule sees at most this much of any field (a cmdline can be 2 MiB)
RULES_BUDGET_SECONDS = 0.25  # rules stop being tried for a process after this long

ParentApp = Callable[[], "str | None"]

_TEMPLATE_FIELD = re.compile(r"{([^{}]*)}")

# crash handlers started by an application for itself
CRASH_HANDLERS = frozenset({"chrome_crashpad_handler", "crashpad_handler"})
# parents whose children are applications of their own: a helper never joins these
MANAGERS = frozenset({"systemd", "init", "launchd", "tini", "dumb-init", "docker-init", "catatonit", "runc",
                      "containerd-shim", "containerd-shim-runc-v2", "conmon", "supervisord", "runsv", "runsvdir",
                      "s6-supervise", "kthreadd", "other"})
# python code run with -c by multiprocessing (and the billiard and loky forks of it) for its helpers
_MP_HELPER_CODE = re.compile(r"^\s*from\s+(multiprocessing|billiard|joblib\.externals\.loky\.backend|loky\.backend)"
                             r"\.\w+\s+import\b")
_MP_HELPER_MODULES = ("joblib.externals.loky.backend.", "loky.backend.")  # loky starts its workers with -m


def is_helper(ident: ProcIdentity) -> bool:
    """A process that works for its parent: multiprocessing workers and trackers, crash handlers."""
    if started_name(ident) in CRASH_HANDLERS:
        return True
    if "--multiprocessing-fork" in ident.cmdline:
        return True
    interp = interpreter_of(ident)
    if interp and PYTHON.match(interp):
        args = ident.cmdline[1:]
        module = python_module(args)
        if module:
            return module.startswith(_MP_HELPER_MODULES)
        for i, arg in enumerate(args[:-1]):
            if arg == "-c" or (arg.startswith("-") and not arg.startswith("--") and arg.endswith("c")):
                return bool(_MP_HELPER_CODE.search(args[i + 1][:1000]))
    return False



class _Parent:
    """The parent's app name, asked for at most once."""

    __slots__ = ("ask", "done", "value")

    def __init__(self, ask: ParentApp | None) -> None:
        self.ask = ask
        self.done = ask is None
        self.value: str | None = None

    def __call__(self) -> str | None:
        if not self.done:
            self.done = True
            try:
                self.value = self.ask() if self.ask else None
            except Exception:  # a parent that cannot be named is no parent
                log.debug("naming the parent failed", exc_info=True)
            if self.value is not None and not isinstance(self.value, str):
                self.value = None
        return self.value


class Namer:
    """Names processes: configured rules first (first match wins), then helpers, then `default_name`.

    `parent`, when given, returns the app of the process's parent; it is called only for
    helpers and for rules with a `parent` matcher or a `{parent}` field.
    """

    def __init__(self, rules: Sequence[NamingRule] = (), *, budget_seconds: float = RULES_BUDGET_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = tuple(rules)
        self.budget_seconds = budget_seconds
        self.clock = clock
        self.over_budget = 0  # processes whose rules were cut short by the time budget

    def name(self, ident: ProcIdentity, parent: ParentApp | None = None) -> str:
        parent_app = _Parent(parent)
        if self.rules:
            started = self.clock()
            for i, rule in enumerate(self.rules):
                if i and self.clock() - started > self.budget_seconds:
                    self.over_budget += 1
                    if self.over_budget == 1 or self.over_budget % 1000 == 0:
                        log.warning("naming rules took over %.2fs for process %r (%d of %d rules tried); "
                                    "it gets its default name (%d such processes so far)", self.budget_seconds,
                                    ident.comm, i, len(self.rules), self.over_budget)
                    break
                name = apply_rule(rule, ident, parent_app)
                if name:
                    return name
        if is_helper(ident):
            joined = parent_app()
            if joined and joined not in MANAGERS:
                return joined
            path = ident.exe or (title_word(ident.cmdline[0]) if ident.cmdline else "")
            if started_name(ident) in CRASH_HANDLERS and path.startswith("/"):
                folder = os.path.basename(os.path.dirname(path))  # /usr/lib/chromium/chrome_crashpad_handler
                if folder and folder not in GENERIC_FOLDERS:
                    return tidy_name(folder) or "unknown"
        return default_name(ident) or "unknown"


def apply_rule(rule: NamingRule, ident: ProcIdentity, parent: ParentApp | None = None) -> str | None:
    """The rule's rendered name when every matcher of the rule matches, else None.

    Numbered groups (`{0}` the whole match, `{1}`...) come from the first matcher that has
    groups, in the order comm, exe, cmdline, user, cgroup, parent (`{0}`: else the first
    matcher); named groups from any matcher. Each field is searched in its first
    MAX_MATCH_CHARS characters.
    """
    parent_app = parent if isinstance(parent, _Parent) else _Parent(parent)
    fields: dict[str, str] = {}
    numbered: Sequence[str] | None = None
    first: str | None = None
    for key in ("comm", "exe", "cmdline", "user", "cgroup", "parent"):
        pattern = getattr(rule, key)
        if pattern is None:
            continue
        value = _field(key, ident, parent_app)
        if value is None:
            return None
        match = pattern.search(value[:MAX_MATCH_CHARS])
        if match is None:
            return None
        fields.update({k: v or "" for k, v in match.groupdict().items()})
        if numbered is None and pattern.groups:
            numbered = [match.group(0), *(g or "" for g in match.groups())]
        if first is None:
            first = match.group(0)
    if numbered is None:
        numbered = [first or ""]
    context = {str(i): v for i, v in enumerate(numbered)}
    context.update(fields)

    def render(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in context:
            return context[key]
        return _template_value(key, ident, parent_app)

    name = tidy_name(_TEMPLATE_FIELD.sub(render, rule.name))
    return name or None


def _field(key: str, ident: ProcIdentity, parent: _Parent) -> str | None:
    if key == "comm":
        return ident.comm
    if key == "exe":
        return ident.exe or (ident.cmdline[0] if ident.cmdline else "")
    if key == "cmdline":
        return _joined(ident.cmdline)
    if key == "user":
        return ident.user or ""
    if key == "cgroup":
        return ident.cgroup or ""
    return parent()  # a process with no parent app matches no `parent` matcher


def _joined(args: Sequence[str]) -> str:
    out: list[str] = []
    size = 0
    for arg in args:
        out.append(arg)
        size += len(arg) + 1
        if size > MAX_MATCH_CHARS:
            break
    return " ".join(out)


def _template_value(key: str, ident: ProcIdentity, parent: _Parent) -> str:
    if key == "comm":
        return ident.comm
    if key == "exe":
        return os.path.basename(ident.exe) if ident.exe else started_name(ident)
    if key == "exe_path":
        return ident.exe or ""
    if key == "user":
        return ident.user or ""
    if key == "unit":
        unit = unit_of_cgroup(ident.cgroup)
        return (app_of_unit(unit) or unit) if unit else ""
    if key == "cgroup":
        return ident.cgroup or ""
    if key == "parent":
        return parent() or ""
    return ""
