"""What an interpreter or a shell wrapper runs, read from its arguments. Pure string parsing.

Returns names for the default chain (`naming_default`):

    script_of("python3", ["-m", "celery.worker"])      -> "celery.worker"
    script_of("python3", ["/srv/shop/manage.py"])      -> "shop"   (a generic script: its folder)
    script_of("node", ["--require", "x", "server.js"], cwd="/srv/api") -> "api"
    shell_command(["-c", "cd /srv && exec ./run.sh"], None) -> (["./run.sh"], "/srv")

Interpreters: python (`-m` modules too), node and its kin (bun, deno), java (`-jar`, `-m`, a main
class), ruby, perl and POSIX shells. A relative script path is resolved against the process's
working folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

MAX_SHELL_SCRIPT = 4096  # characters of a `sh -c` script that are parsed

PYTHON = re.compile(r"^python[0-9.]*[dmu]?$|^pypy[0-9.]*$")
NODE = re.compile(r"^(node|nodejs|bun|deno)$")
_JAVA = re.compile(r"^java$")
_RUBY = re.compile(r"^ruby[0-9.]*$")
_PERL = re.compile(r"^perl[0-9.]*$")
SHELL = re.compile(r"^(sh|bash|dash|zsh|ksh|mksh|ash|busybox)$")

INTERPRETERS = (PYTHON, NODE, _JAVA, _RUBY, _PERL, SHELL)

_PY_OPTS_WITH_ARG = {"-W", "-X", "-Q"}
NODE_OPTS_WITH_ARG = {"-r", "--require", "--import", "--loader", "--experimental-loader", "--inspect-port",
                       "--title", "--max-old-space-size", "-e", "--eval", "-p", "--print"}
_JAVA_OPTS_WITH_ARG = {"-cp", "-classpath", "--class-path", "-p", "--module-path", "--add-modules",
                       "--add-opens", "--add-exports", "--add-reads", "--patch-module", "--upgrade-module-path",
                       "--limit-modules", "-splash"}
SCRIPT_SUFFIXES = (".py", ".pyw", ".pyz", ".js", ".mjs", ".cjs", ".ts", ".mts", ".jar", ".rb", ".pl", ".pm", ".sh",
                    ".bash")

# entry scripts whose name says nothing: the app is named by their folder
GENERIC_SCRIPTS = frozenset({"main", "app", "index", "server", "run", "start", "cli", "manage", "wsgi", "asgi",
                             "__main__", "__init__"})
# folders that say nothing either: the folder above is tried (the nearest is kept if all are generic)
GENERIC_FOLDERS = frozenset({"src", "lib", "bin", "sbin", "dist", "build", "out", "app", "apps", "server", "source",
                              "sources", "scripts", "cmd", "srv", "opt", "usr", "local", "home", "var", "tmp",
                              "root", "www", "share", "current"})


def has_short_flag(args: Sequence[str], flag: str) -> bool:
    return any(a.startswith("-") and not a.startswith("--") and flag in a[1:] for a in args)


def _folder_name(folder: str) -> str | None:
    """The name of an app's folder: the nearest folder that is not a generic one (`src`, `bin`)."""
    parts = [p for p in folder.split("/") if p and p not in (".", "..")]
    for part in reversed(parts):
        if part not in GENERIC_FOLDERS:
            return part
    return parts[-1] if parts else None


def script_path(path: str, cwd: str | None) -> str:
    """A script's path, made absolute against the process's working folder when it is relative."""
    if path.startswith("/") or not cwd:
        return path
    return os.path.normpath(os.path.join(cwd, path))


def strip_script(path: str, cwd: str | None = None) -> str | None:
    """The app name of a script: its name without suffix, or its folder's for a generic entry script."""
    if path.startswith(("/dev/fd/", "/proc/", "/dev/stdin")):
        return None  # a script fed through a pipe or fd has no name of its own
    full = script_path(path, cwd).rstrip("/")
    base = os.path.basename(full)
    stem = base
    for suffix in SCRIPT_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            stem = base[: -len(suffix)]
            break
    if stem in GENERIC_SCRIPTS:
        return _folder_name(os.path.dirname(full)) or stem
    return stem or None


def first_operand(args: Sequence[str], with_arg: set[str]) -> str | None:
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
        elif not arg.startswith("-") or arg == "-c" or has_short_flag([arg], "c"):
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
    if PYTHON.match(interpreter):
        module = python_module(args)
        if module:
            return module
        operand = _python_operand(args)
        return strip_script(operand, cwd) if operand else None
    if NODE.match(interpreter):
        if any(a in ("-e", "--eval", "-p", "--print") for a in args):
            return None
        operand = first_operand(args, NODE_OPTS_WITH_ARG)
        return strip_script(operand, cwd) if operand and operand not in ("run", "start") else None
    if _JAVA.match(interpreter):
        for i, arg in enumerate(args):
            if arg == "-jar" and i + 1 < len(args):
                return strip_script(args[i + 1], cwd)
            if arg in ("-m", "--module") and i + 1 < len(args):
                return args[i + 1].split("/")[-1].rsplit(".", 1)[-1]
        operand = first_operand(args, _JAVA_OPTS_WITH_ARG)
        return operand.rsplit(".", 1)[-1] if operand else None
    if _RUBY.match(interpreter) or _PERL.match(interpreter):
        if any(a == "-e" or a == "-E" for a in args):
            return None
        operand = first_operand(args, {"-I", "-r"})
        return strip_script(operand, cwd) if operand else None
    if SHELL.match(interpreter):
        if has_short_flag(args, "c"):
            return None
        operand = first_operand(args, {"-o", "+o", "-O", "+O"})
        return strip_script(operand, cwd) if operand else None
    return None


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
    script = first_operand(args, {"-o", "+o", "-O", "+O"})
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

