"""The default app name of a process, used when no configured rule matches (`default_name`).

Steps 3-7 of the chain in `naming`, in order:
  3. a systemd service or app scope, suffixes stripped (`nginx.service` -> `nginx`,
     `app-gnome-firefox-1234.scope` -> `firefox`), except job runners (`cron.service`), whose jobs
     are named by what they run;
  4. the outermost macOS `.app` bundle;
  5. for interpreters, what they run (`naming_scripts`); for node and its launchers (npm, npx,
     yarn, pnpm) the `name` in the nearest `package.json`, read through the identity's injected
     `read_file`; for `sh -c 'SCRIPT'`, the program the script runs, named as if it were the process;
  6. the executable's name as it was started (`started_name`);
  7. comm.

    default_name(ProcIdentity(comm="nginx", cgroup="/system.slice/nginx.service"))  -> "nginx"
    default_name(ProcIdentity(comm="python3", cmdline=("python3", "/opt/etl/load.py"))) -> "load"

Names never hold whitespace or control characters (`tidy_name`).
"""

from __future__ import annotations

import os
import re

from atlas_exporter.apps.naming_scripts import (
    INTERPRETERS,
    NODE,
    NODE_OPTS_WITH_ARG,
    SCRIPT_SUFFIXES,
    SHELL,
    first_operand,
    has_short_flag,
    script_of,
    script_path,
    shell_command,
    strip_script,
)
from atlas_exporter.model import ProcIdentity

MAX_NAME_LENGTH = 128
MAX_PACKAGE_LEVELS = 32  # folders walked up looking for package.json

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
_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")

# node package managers that run a package's scripts: named by the package they run
_NODE_LAUNCHERS = frozenset({"npm", "npx", "yarn", "yarnpkg", "pnpm", "pnpx", "corepack"})
_NODE_LAUNCHER_SCRIPTS = frozenset({"npm-cli.js", "npx-cli.js", "yarn.js", "yarn.cjs", "pnpm.cjs", "pnpm.mjs",
                                    "pnpx.cjs", "corepack.cjs"})
# services whose processes are other programs (jobs), each named as if it had no unit
JOB_RUNNER_UNITS = frozenset({"cron", "crond", "cronie", "anacron", "atd", "supervisor", "supervisord", "circus",
                              "circusd"})


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


def package_name(ident: ProcIdentity, folder: str | None) -> str | None:
    """The `name` in the nearest package.json at or above `folder`, scope dropped; None if none.

    The search starts above any `node_modules` (code of a dependency belongs to the project
    that installed it) and stops at the first package.json found, named or not.
    """
    read = ident.read_file
    if read is None or not folder or not folder.startswith("/"):
        return None
    import json  # only node processes need it
    folder = os.path.normpath(folder)
    if "/node_modules/" in folder + "/":  # a dependency's code: the app is the project that holds it
        folder = folder[: (folder + "/").index("/node_modules/")] or "/"
    for _ in range(MAX_PACKAGE_LEVELS):
        data = read(folder.rstrip("/") + "/package.json")
        if data is not None:
            try:
                manifest = json.loads(data)
            except (ValueError, RecursionError):
                return None
            name = manifest.get("name") if isinstance(manifest, dict) else None
            if not isinstance(name, str):
                return None
            return tidy_name(name.rsplit("/", 1)[-1] if name.startswith("@") else name) or None
        if folder == "/":
            return None
        folder = os.path.dirname(folder)
    return None


def _node_app(interpreter: str, ident: ProcIdentity) -> str | None:
    """node: a launcher (npm, yarn...) by the package it runs, a script by its package or its name."""
    args = ident.cmdline[1:]
    title = os.path.basename(title_word(ident.cmdline[0])) if ident.cmdline else ""
    operand = None
    if not any(a in ("-e", "--eval", "-p", "--print") for a in args):
        operand = first_operand(args, NODE_OPTS_WITH_ARG)
    launcher = title if title in _NODE_LAUNCHERS else None
    if launcher is None and operand is not None:
        base = os.path.basename(operand)
        if base in _NODE_LAUNCHERS or base in _NODE_LAUNCHER_SCRIPTS:
            launcher = base.split(".")[0].split("-")[0]
    if launcher is not None:
        return package_name(ident, ident.cwd) or launcher
    if operand is None or operand in ("run", "start"):
        return None
    path = script_path(operand, ident.cwd)
    if path.startswith("/") and not path.startswith(("/dev/", "/proc/")):
        found = package_name(ident, os.path.dirname(path))
        if found:
            return found
    return strip_script(operand, ident.cwd)



def _shell_app(ident: ProcIdentity, depth: int) -> str | None:
    """`sh -c 'SCRIPT'`: the name of the program the script runs, as if it were the process."""
    found = shell_command(ident.cmdline[1:], ident.cwd)
    if found is None:
        return None
    argv, cwd = found
    base = os.path.basename(argv[0])
    if not base:
        return None
    if base.endswith(SCRIPT_SUFFIXES):  # a script run by its #! interpreter: named as that process is
        return strip_script(argv[0], cwd)
    child = ProcIdentity(comm=base[:15], cmdline=tuple(argv), user=ident.user, cwd=cwd, read_file=ident.read_file)
    return _default(child, depth + 1)


def title_word(title: str) -> str:
    """The first word of a process title ("nginx: worker process" -> "nginx", "npm start" -> "npm")."""
    if title.isprintable() and " " not in title:
        return title
    return (title.split() or [""])[0].rstrip(":")


def started_name(ident: ProcIdentity) -> str:
    """The executable's name as it was started, untruncated.

    comm is the first 15 bytes of the file name that was executed: prefer argv[0]'s or the
    exe's basename when comm is a prefix of it (a symlinked tool keeps its own name). A
    retitled argv[0] ("nginx: worker process", "npm start") counts by its first word. A
    program run from a memfd has no file name: its argv[0] names it.
    """
    argv0 = title_word(ident.cmdline[0]) if ident.cmdline else None
    # a process that retitled itself (its argv[0] holds spaces) set its comm from the same title
    comm = title_word(ident.comm) if ident.cmdline and argv0 != ident.cmdline[0] else ident.comm
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


def interpreter_of(ident: ProcIdentity) -> str:
    argv0 = title_word(ident.cmdline[0]) if ident.cmdline else None
    for path in (ident.exe, argv0):
        if path:
            base = os.path.basename(path)
            if any(p.match(base) for p in INTERPRETERS):
                return base
    return ""


def _default(ident: ProcIdentity, depth: int) -> str:
    unit = unit_of_cgroup(ident.cgroup)
    if unit:
        name = app_of_unit(unit)
        if name and name not in JOB_RUNNER_UNITS:
            return tidy_name(name)
    if ident.bundle:
        return tidy_name(ident.bundle)
    interp = interpreter_of(ident)
    if interp:
        if NODE.match(interp):
            script = _node_app(interp, ident)
        elif SHELL.match(interp) and has_short_flag(ident.cmdline[1:], "c"):
            script = _shell_app(ident, depth) if depth < 3 else None
        else:
            script = script_of(interp, ident.cmdline[1:], ident.cwd) if len(ident.cmdline) > 1 else None
        if script:
            return tidy_name(script)
    return tidy_name(started_name(ident)) or "unknown"


def default_name(ident: ProcIdentity) -> str:
    """The default app name of a process (steps 3-7 of the module docstring)."""
    return _default(ident, 0)



def tidy_name(name: str) -> str:
    """No whitespace or control characters (each run becomes one `_`), at most MAX_NAME_LENGTH characters."""
    name = name.strip()
    if not name.isprintable() or any(ch.isspace() for ch in name):
        name = re.sub(r"\s+", "_", "".join(ch if ch.isprintable() else " " for ch in name).strip())
    return name[:MAX_NAME_LENGTH]

