"""Application names: configured rules first, then the default chain. Pure, no I/O.

`Namer.name(identity)` returns what a person calls the app a process belongs to:
  1. the first configured rule that matches (comm, exe, cmdline, user, cgroup regexes);
  2. a systemd service or app scope, suffixes stripped
     (`nginx.service` -> `nginx`, `app-gnome-firefox-1234.scope` -> `firefox`);
  3. the outermost macOS `.app` bundle (filled in by the macOS source);
  4. for interpreters (python, node, java, ruby, perl, sh), the script or main module;
  5. the executable's name as it was started (so a symlinked tool keeps its own name);
  6. comm.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from atlas_exporter.config import NamingRule
from atlas_exporter.model import ProcIdentity

MAX_NAME_LENGTH = 128

# cgroup leaves that say nothing about the application inside them
_GENERIC_UNITS = re.compile(
    r"^(init\.scope|session-[^/]*\.scope|user@\d+\.service|user-\d+\.slice|user\.slice|system\.slice|"
    r"machine\.slice|[^/]*\.slice|docker-[0-9a-f]+\.scope|cri-containerd-[0-9a-f]+\.scope|"
    r"crio-[0-9a-f]+\.scope|libpod-[0-9a-f]+\.scope|run-[^/]*\.scope|run-[^/]*\.service|"
    r"dbus-:[^/]*|vte-spawn-[^/]*\.scope|[0-9a-f]{64}|kubepods[^/]*|pod[0-9a-f_-]+)$"
)
_LAUNCHERS = ("gnome", "kde", "flatpak", "xfce", "xfce4", "lxqt", "mate", "cinnamon", "dbus", "systemd", "sway",
              "i3", "hyprland", "niri", "budgie", "unity")
_RANDOM_SUFFIX = re.compile(r"[-@](?:\d+|[0-9a-f]{8,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_SNAP_SCOPE = re.compile(r"^snap\.([^.]+)\.")
_TEMPLATE_FIELD = re.compile(r"{([^{}]*)}")
_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")

_PYTHON = re.compile(r"^python[0-9.]*[dmu]?$|^pypy[0-9.]*$")
_NODE = re.compile(r"^(node|nodejs|bun|deno)$")
_JAVA = re.compile(r"^java$")
_RUBY = re.compile(r"^ruby[0-9.]*$")
_PERL = re.compile(r"^perl[0-9.]*$")
_SHELL = re.compile(r"^(sh|bash|dash|zsh|ksh|mksh|ash|busybox)$")

_INTERPRETERS = (_PYTHON, _NODE, _JAVA, _RUBY, _PERL, _SHELL)

_PY_OPTS_WITH_ARG = {"-W", "-X", "-Q"}
_NODE_OPTS_WITH_ARG = {"-r", "--require", "--import", "--loader", "--experimental-loader", "--inspect-port",
                       "--title", "--max-old-space-size", "-e", "--eval", "-p", "--print"}
_JAVA_OPTS_WITH_ARG = {"-cp", "-classpath", "--class-path", "-p", "--module-path", "--add-modules",
                       "--add-opens", "--add-exports", "--add-reads", "--patch-module", "--upgrade-module-path",
                       "--limit-modules", "-splash"}
_SCRIPT_SUFFIXES = (".py", ".pyw", ".js", ".mjs", ".cjs", ".ts", ".jar", ".rb", ".pl", ".pm", ".sh", ".bash")


def unit_of_cgroup(cgroup: str | None) -> str | None:
    """The deepest systemd unit in a cgroup path that names an application, else None."""
    if not cgroup or cgroup == "/":
        return None
    for part in reversed(cgroup.strip("/").split("/")):
        if not part or _GENERIC_UNITS.match(part):
            continue
        if part.endswith((".service", ".scope")):
            return part
    return None


def app_of_unit(unit: str) -> str | None:
    """What a person calls the app of a systemd unit (suffixes, launchers and random ids stripped)."""
    name = _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), unit)
    snap = _SNAP_SCOPE.match(name)
    if snap:
        return snap.group(1)
    name = name.rsplit(".", 1)[0]  # .service / .scope
    if "@" in name:
        name = name.split("@", 1)[0]
    if name.startswith("app-"):
        name = name[4:]
        name = _RANDOM_SUFFIX.sub("", name)
        first, sep, rest = name.partition("-")
        if sep and first in _LAUNCHERS and rest:
            name = rest
        name = _RANDOM_SUFFIX.sub("", name)
        if name.endswith(".desktop"):
            name = name[: -len(".desktop")]
        if name.count(".") >= 2:  # reverse-DNS application id: org.mozilla.firefox
            name = name.rsplit(".", 1)[1]
    return name or None


def _strip_script(path: str) -> str | None:
    if path.startswith(("/dev/fd/", "/proc/", "/dev/stdin")):
        return None  # a script fed through a pipe or fd has no name of its own
    base = os.path.basename(path.rstrip("/"))
    if base in ("__main__.py", "__init__.py", "main.py", "index.js", "main.js", "app.js"):
        parent = os.path.basename(os.path.dirname(path.rstrip("/")))
        base = parent or base
    for suffix in _SCRIPT_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base or None


def _first_operand(args: Sequence[str], with_arg: set[str]) -> str | None:
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--":
            continue
        if arg.startswith("-"):
            if arg in with_arg:
                skip = True
            continue
        return arg
    return None


def script_of(interpreter: str, args: Sequence[str]) -> str | None:
    """The script or main module an interpreter runs, from its arguments (argv[1:]); None if inline."""
    if _PYTHON.match(interpreter):
        skip = False
        for i, arg in enumerate(args):
            if skip:
                skip = False
                continue
            if arg == "-m" and i + 1 < len(args):
                return args[i + 1].split(".")[0] if args[i + 1] != "" else None
            if arg.startswith("-m") and len(arg) > 2:
                return arg[2:].split(".")[0]
            if arg == "-c" or (arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:]):
                return None
            if arg in _PY_OPTS_WITH_ARG:
                skip = True
                continue
            if arg.startswith("-"):
                continue
            return _strip_script(arg)
        return None
    if _NODE.match(interpreter):
        if any(a in ("-e", "--eval", "-p", "--print") for a in args):
            return None
        operand = _first_operand(args, _NODE_OPTS_WITH_ARG)
        return _strip_script(operand) if operand and operand not in ("run", "start") else None
    if _JAVA.match(interpreter):
        for i, arg in enumerate(args):
            if arg == "-jar" and i + 1 < len(args):
                return _strip_script(args[i + 1])
            if arg in ("-m", "--module") and i + 1 < len(args):
                return args[i + 1].split("/")[-1].rsplit(".", 1)[-1]
        operand = _first_operand(args, _JAVA_OPTS_WITH_ARG)
        return operand.rsplit(".", 1)[-1] if operand else None
    if _RUBY.match(interpreter) or _PERL.match(interpreter):
        if any(a == "-e" or a == "-E" for a in args):
            return None
        operand = _first_operand(args, {"-I", "-r"})
        return _strip_script(operand) if operand else None
    if _SHELL.match(interpreter):
        if any(a == "-c" or (a.startswith("-") and not a.startswith("--") and "c" in a[1:]) for a in args):
            return None
        operand = _first_operand(args, {"-o", "+o", "-O", "+O"})
        return _strip_script(operand) if operand else None
    return None


def started_name(ident: ProcIdentity) -> str:
    """The executable's name as it was started, untruncated.

    comm is the first 15 bytes of the file name that was executed: prefer argv[0]'s or the
    exe's basename when comm is a prefix of it (a symlinked tool keeps its own name). A
    retitled argv[0] ("nginx: worker process") counts by its first word. A program run from
    a memfd has no file name: its argv[0] names it.
    """
    comm = ident.comm
    argv0 = ident.cmdline[0] if ident.cmdline else None
    if argv0 and " " in argv0:
        argv0 = argv0.split()[0].rstrip(":")
    exe = ident.exe if ident.exe and not os.path.basename(ident.exe).startswith("memfd:") else None
    for path in (argv0, exe):
        if path:
            base = os.path.basename(path)
            if base and comm and base.startswith(comm):
                return base
    if comm.startswith("memfd:") and argv0:
        return os.path.basename(argv0) or comm
    if exe and not comm:
        return os.path.basename(exe)
    return comm


def _interpreter(ident: ProcIdentity) -> str:
    for path in (ident.exe, ident.cmdline[0] if ident.cmdline else None):
        if path:
            base = os.path.basename(path)
            if any(p.match(base) for p in _INTERPRETERS):
                return base
    return ""


def default_name(ident: ProcIdentity) -> str:
    """The default app name of a process (steps 2-6 of the module docstring)."""
    unit = unit_of_cgroup(ident.cgroup)
    if unit:
        name = app_of_unit(unit)
        if name:
            return name
    if ident.bundle:
        return ident.bundle
    interp = _interpreter(ident)
    if interp and len(ident.cmdline) > 1:
        script = script_of(interp, ident.cmdline[1:])
        if script:
            return script
    return started_name(ident) or "unknown"


def _clean(name: str) -> str:
    name = "".join(ch if ch.isprintable() else "_" for ch in name).strip()
    return name[:MAX_NAME_LENGTH]


class Namer:
    """Names processes: configured rules first (first match wins), then `default_name`."""

    def __init__(self, rules: Sequence[NamingRule] = ()) -> None:
        self.rules = tuple(rules)

    def name(self, ident: ProcIdentity) -> str:
        for rule in self.rules:
            name = apply_rule(rule, ident)
            if name:
                return name
        return _clean(default_name(ident)) or "unknown"


def apply_rule(rule: NamingRule, ident: ProcIdentity) -> str | None:
    """The rule's rendered name when every matcher of the rule matches, else None.

    Numbered groups (`{0}` the whole match, `{1}`...) come from the first matcher that has
    groups, in the order comm, exe, cmdline, user, cgroup (`{0}`: else the first matcher);
    named groups from any matcher.
    """
    values = {
        "comm": ident.comm,
        "exe": ident.exe or (ident.cmdline[0] if ident.cmdline else ""),
        "cmdline": " ".join(ident.cmdline),
        "user": ident.user or "",
        "cgroup": ident.cgroup or "",
    }
    fields: dict[str, str] = {}
    numbered: Sequence[str] | None = None
    first: str | None = None
    for key in ("comm", "exe", "cmdline", "user", "cgroup"):
        pattern: re.Pattern[str] | None = getattr(rule, key)
        if pattern is None:
            continue
        match = pattern.search(values[key])
        if match is None:
            return None
        fields.update({k: v or "" for k, v in match.groupdict().items()})
        if numbered is None and match.re.groups:
            numbered = [match.group(0), *(g or "" for g in match.groups())]
        if first is None:
            first = match.group(0)
    if numbered is None:
        numbered = [first or ""]
    unit = unit_of_cgroup(ident.cgroup)
    context = {
        "comm": ident.comm,
        "exe": os.path.basename(ident.exe) if ident.exe else started_name(ident),
        "exe_path": ident.exe or "",
        "user": ident.user or "",
        "unit": (app_of_unit(unit) or unit) if unit else "",
        "cgroup": ident.cgroup or "",
        **{str(i): v for i, v in enumerate(numbered)},
        **fields,
    }
    name = _TEMPLATE_FIELD.sub(lambda m: context.get(m.group(1), ""), rule.name)
    name = _clean(name)
    return name or None
