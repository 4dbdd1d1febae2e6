"""Application names: configured rules first, then the process tree, then the default chain.

Pure logic: files are read only through the identity's injected `read_file`.

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

from atlas_exporter.config import NamingRule
from atlas_exporter.model import ProcIdentity

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 128
MAX_MATCH_CHARS = 65536  # a rule sees at most this much of any field (a cmdline can be 2 MiB)
RULES_BUDGET_SECONDS = 0.25  # rules stop being tried for a process after this long
MAX_SHELL_SCRIPT = 4096  # characters of a `sh -c` script that are parsed
MAX_PACKAGE_LEVELS = 32  # folders walked up looking for package.json

ParentApp = Callable[[], "str | None"]

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
_SCRIPT_SUFFIXES = (".py", ".pyw", ".pyz", ".js", ".mjs", ".cjs", ".ts", ".mts", ".jar", ".rb", ".pl", ".pm", ".sh",
                    ".bash")

# entry scripts whose name says nothing: the app is named by their folder
GENERIC_SCRIPTS = frozenset({"main", "app", "index", "server", "run", "start", "cli", "manage", "wsgi", "asgi",
                             "__main__", "__init__"})
# folders that say nothing either: the folder above is tried (the nearest is kept if all are generic)
_GENERIC_FOLDERS = frozenset({"src", "lib", "bin", "sbin", "dist", "build", "out", "app", "apps", "server", "source",
                              "sources", "scripts", "cmd", "srv", "opt", "usr", "local", "home", "var", "tmp",
                              "root", "www", "share", "current"})
# node package managers that run a package's scripts: named by the package they run
_NODE_LAUNCHERS = frozenset({"npm", "npx", "yarn", "yarnpkg", "pnpm", "pnpx", "corepack"})
_NODE_LAUNCHER_SCRIPTS = frozenset({"npm-cli.js", "npx-cli.js", "yarn.js", "yarn.cjs", "pnpm.cjs", "pnpm.mjs",
                                    "pnpx.cjs", "corepack.cjs"})
# services whose processes are other programs (jobs), each named as if it had no unit
JOB_RUNNER_UNITS = frozenset({"cron", "crond", "cronie", "anacron", "atd", "supervisor", "supervisord", "circus",
                              "circusd"})
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


def _has_short_flag(args: Sequence[str], flag: str) -> bool:
    return any(a.startswith("-") and not a.startswith("--") and flag in a[1:] for a in args)


def _folder_name(folder: str) -> str | None:
    """The name of an app's folder: the nearest folder that is not a generic one (`src`, `bin`)."""
    parts = [p for p in folder.split("/") if p and p not in (".", "..")]
    for part in reversed(parts):
        if part not in _GENERIC_FOLDERS:
            return part
    return parts[-1] if parts else None


def script_path(path: str, cwd: str | None) -> str:
    """A script's path, made absolute against the process's working folder when it is relative."""
    if path.startswith("/") or not cwd:
        return path
    return os.path.normpath(os.path.join(cwd, path))


def _strip_script(path: str, cwd: str | None = None) -> str | None:
    """The app name of a script: its name without suffix, or its folder's for a generic entry script."""
    if path.startswith(("/dev/fd/", "/proc/", "/dev/stdin")):
        return None  # a script fed through a pipe or fd has no name of its own
    full = script_path(path, cwd).rstrip("/")
    base = os.path.basename(full)
    stem = base
    for suffix in _SCRIPT_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            stem = base[: -len(suffix)]
            break
    if stem in GENERIC_SCRIPTS:
        return _folder_name(os.path.dirname(full)) or stem
    return stem or None


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


def python_module(args: Sequence[str]) -> str | None:
    """The module of `python -m pkg.mod` (`pkg.mod`; `pkg.__main__` -> `pkg`), else None."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == "-m" or (arg.startswith("-m") and len(arg) > 2):
            module = args[i + 1] if arg == "-m" and i + 1 < len(args) else arg[2:]
            if module.endswith(".__main__"):
                module = module[: -len(".__main__")]
            return module or None
        if arg in _PY_OPTS_WITH_ARG:
            skip = True
        elif not arg.startswith("-") or arg == "-c" or _has_short_flag([arg], "c"):
            return None
    return None


def _python_operand(args: Sequence[str]) -> str | None:
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "-c" or (arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:]):
            return None
        if arg in _PY_OPTS_WITH_ARG:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        return arg
    return None


def script_of(interpreter: str, args: Sequence[str], cwd: str | None = None) -> str | None:
    """The script or main module an interpreter runs, from its arguments (argv[1:]); None if inline."""
    if _PYTHON.match(interpreter):
        module = python_module(args)
        if module:
            return module
        operand = _python_operand(args)
        return _strip_script(operand, cwd) if operand else None
    if _NODE.match(interpreter):
        if any(a in ("-e", "--eval", "-p", "--print") for a in args):
            return None
        operand = _first_operand(args, _NODE_OPTS_WITH_ARG)
        return _strip_script(operand, cwd) if operand and operand not in ("run", "start") else None
    if _JAVA.match(interpreter):
        for i, arg in enumerate(args):
            if arg == "-jar" and i + 1 < len(args):
                return _strip_script(args[i + 1], cwd)
            if arg in ("-m", "--module") and i + 1 < len(args):
                return args[i + 1].split("/")[-1].rsplit(".", 1)[-1]
        operand = _first_operand(args, _JAVA_OPTS_WITH_ARG)
        return operand.rsplit(".", 1)[-1] if operand else None
    if _RUBY.match(interpreter) or _PERL.match(interpreter):
        if any(a == "-e" or a == "-E" for a in args):
            return None
        operand = _first_operand(args, {"-I", "-r"})
        return _strip_script(operand, cwd) if operand else None
    if _SHELL.match(interpreter):
        if _has_short_flag(args, "c"):
            return None
        operand = _first_operand(args, {"-o", "+o", "-O", "+O"})
        return _strip_script(operand, cwd) if operand else None
    return None


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
            return _clean(name.rsplit("/", 1)[-1] if name.startswith("@") else name) or None
        if folder == "/":
            return None
        folder = os.path.dirname(folder)
    return None


def _node_app(interpreter: str, ident: ProcIdentity) -> str | None:
    """node: a launcher (npm, yarn...) by the package it runs, a script by its package or its name."""
    args = ident.cmdline[1:]
    title = os.path.basename(_title_word(ident.cmdline[0])) if ident.cmdline else ""
    operand = None
    if not any(a in ("-e", "--eval", "-p", "--print") for a in args):
        operand = _first_operand(args, _NODE_OPTS_WITH_ARG)
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
    return _strip_script(operand, ident.cwd)


# words that run the command after them in the same process (or whose child is the command)
_PREFIX_COMMANDS = {"exec": set(), "nohup": set(), "setsid": set(), "env": {"-u", "--unset", "-C", "--chdir"},
                    "nice": {"-n", "--adjustment"}, "ionice": {"-c", "-n", "-p", "-t"}, "stdbuf": set(),
                    "chrt": set(), "taskset": set(), "time": set(), "command": set(), "builtin": set(),
                    "timeout": {"-s", "--signal", "-k", "--kill-after"}, "flock": {"-w", "--timeout", "-E"},
                    "sudo": {"-u", "--user", "-g", "--group", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T"}}
_TAKES_ONE_OPERAND = {"timeout", "chrt", "taskset", "flock"}  # a duration, priority, cpu mask or lock file
# commands that set things up and are not the program a wrapper runs
_SETUP_COMMANDS = frozenset({"cd", "export", "set", "unset", "umask", "ulimit", ":", "true", "false", "trap",
                             "echo", "printf", "sleep", "test", "[", "[[", "wait", "read", "shift", "local",
                             "source", ".", "mkdir", "rm", "touch", "cp", "mv", "ln", "chmod", "chown", "date",
                             "cat", "tee", "logger", "!", "{", "}", "if", "then", "else", "elif", "fi", "while",
                             "until", "do", "done", "alias", "declare", "typeset", "readonly"})
_KEYWORDS = frozenset({"if", "then", "else", "elif", "while", "until", "do", "!", "{", "time"})
_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "(", ")", "((", "))", ";;", "|&", ";&"})
_REDIRECTS = frozenset({">", ">>", "<", "<<", "<<<", ">&", "<&", "&>", "&>>", ">|", "<>"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _simple_commands(script: str) -> list[list[str]] | None:
    """The simple commands of a shell script, in order (words without redirections); None if unparsable."""
    import shlex  # only shell wrappers need it
    lexer = shlex.shlex(script.replace("\n", ";"), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    skip_next = False
    try:
        for token in lexer:
            if skip_next:
                skip_next = False
                continue
            if token in _SEPARATORS:
                commands.append([])
            elif token in _REDIRECTS or (token and token[0] in "<>" and set(token) <= set("<>&|")):
                skip_next = True  # the redirection's target
            else:
                commands[-1].append(token)
    except ValueError:  # unbalanced quotes
        return None
    return [c for c in commands if c]


def _program_of_command(words: list[str]) -> list[str] | None:
    """argv of the program a simple command runs, past assignments and prefixes (`exec`, `nohup`...)."""
    i = 0
    while i < len(words):
        word = words[i]
        if _ASSIGNMENT.match(word) or word in _KEYWORDS:
            i += 1
            continue
        prefix = os.path.basename(word)
        if prefix in _PREFIX_COMMANDS:
            with_arg = _PREFIX_COMMANDS[prefix]
            i += 1
            while i < len(words) and words[i].startswith("-") and words[i] != "-":
                i += 2 if words[i] in with_arg else 1
            if prefix in _TAKES_ONE_OPERAND and i < len(words):
                i += 1
            continue
        return words[i:]
    return None


def shell_command(args: Sequence[str], cwd: str | None) -> tuple[list[str], str | None] | None:
    """The program `sh -c SCRIPT` runs (its argv) and its working folder; None if not found.

    The first command that is not set-up (`cd`, `export`, `sleep`...) or shell syntax counts;
    a `cd` before it moves the working folder.
    """
    script = _first_operand(args, {"-o", "+o", "-O", "+O"})
    if not script or len(script) > MAX_SHELL_SCRIPT:
        return None
    commands = _simple_commands(script)
    if not commands:
        return None
    for command in commands:
        argv = _program_of_command(command)
        if not argv:
            continue
        program = argv[0]
        if program == "cd":
            target = argv[1] if len(argv) > 1 else None
            if target and not target.startswith(("$", "~", "-")):
                cwd = script_path(target, cwd) if (cwd or target.startswith("/")) else None
            continue
        if program in ("for", "select", "case", "function", "coproc") or program.startswith(("$", "`")):
            return None  # too much shell to know which program it runs
        if program in _SETUP_COMMANDS:
            continue
        return argv, cwd
    return None


def _shell_app(ident: ProcIdentity, depth: int) -> str | None:
    """`sh -c 'SCRIPT'`: the name of the program the script runs, as if it were the process."""
    found = shell_command(ident.cmdline[1:], ident.cwd)
    if found is None:
        return None
    argv, cwd = found
    base = os.path.basename(argv[0])
    if not base:
        return None
    if base.endswith(_SCRIPT_SUFFIXES):  # a script run by its #! interpreter: named as that process is
        return _strip_script(argv[0], cwd)
    child = ProcIdentity(comm=base[:15], cmdline=tuple(argv), user=ident.user, cwd=cwd, read_file=ident.read_file)
    return _default(child, depth + 1)


def _title_word(title: str) -> str:
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
    argv0 = _title_word(ident.cmdline[0]) if ident.cmdline else None
    # a process that retitled itself (its argv[0] holds spaces) set its comm from the same title
    comm = _title_word(ident.comm) if ident.cmdline and argv0 != ident.cmdline[0] else ident.comm
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
    argv0 = _title_word(ident.cmdline[0]) if ident.cmdline else None
    for path in (ident.exe, argv0):
        if path:
            base = os.path.basename(path)
            if any(p.match(base) for p in _INTERPRETERS):
                return base
    return ""


def _default(ident: ProcIdentity, depth: int) -> str:
    unit = unit_of_cgroup(ident.cgroup)
    if unit:
        name = app_of_unit(unit)
        if name and name not in JOB_RUNNER_UNITS:
            return _clean(name)
    if ident.bundle:
        return _clean(ident.bundle)
    interp = _interpreter(ident)
    if interp:
        if _NODE.match(interp):
            script = _node_app(interp, ident)
        elif _SHELL.match(interp) and _has_short_flag(ident.cmdline[1:], "c"):
            script = _shell_app(ident, depth) if depth < 3 else None
        else:
            script = script_of(interp, ident.cmdline[1:], ident.cwd) if len(ident.cmdline) > 1 else None
        if script:
            return _clean(script)
    return _clean(started_name(ident)) or "unknown"


def default_name(ident: ProcIdentity) -> str:
    """The default app name of a process (steps 3-7 of the module docstring)."""
    return _default(ident, 0)


def is_helper(ident: ProcIdentity) -> bool:
    """A process that works for its parent: multiprocessing workers and trackers, crash handlers."""
    if started_name(ident) in CRASH_HANDLERS:
        return True
    if "--multiprocessing-fork" in ident.cmdline:
        return True
    interp = _interpreter(ident)
    if interp and _PYTHON.match(interp):
        args = ident.cmdline[1:]
        module = python_module(args)
        if module:
            return module.startswith(_MP_HELPER_MODULES)
        for i, arg in enumerate(args[:-1]):
            if arg == "-c" or (arg.startswith("-") and not arg.startswith("--") and arg.endswith("c")):
                return bool(_MP_HELPER_CODE.search(args[i + 1][:1000]))
    return False


def _clean(name: str) -> str:
    """No whitespace or control characters (each run becomes one `_`), at most MAX_NAME_LENGTH characters."""
    name = name.strip()
    if not name.isprintable() or any(ch.isspace() for ch in name):
        name = re.sub(r"\s+", "_", "".join(ch if ch.isprintable() else " " for ch in name).strip())
    return name[:MAX_NAME_LENGTH]


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
            path = ident.exe or (_title_word(ident.cmdline[0]) if ident.cmdline else "")
            if started_name(ident) in CRASH_HANDLERS and path.startswith("/"):
                folder = os.path.basename(os.path.dirname(path))  # /usr/lib/chromium/chrome_crashpad_handler
                if folder and folder not in _GENERIC_FOLDERS:
                    return _clean(folder) or "unknown"
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

    name = _clean(_TEMPLATE_FIELD.sub(render, rule.name))
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
