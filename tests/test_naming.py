"""App naming: the default chain, configured rules with templates, and the max_apps fold."""

from __future__ import annotations

import pytest

from atlas_exporter.apps.naming import Namer
from atlas_exporter.apps.naming_default import app_of_unit, default_name, unit_of_cgroup
from atlas_exporter.apps.naming_scripts import script_of
from atlas_exporter.apps.resolver import OTHER, AppFold, AppResolver
from atlas_exporter.config import parse_config
from atlas_exporter.model import ProcessId, ProcIdentity, ProcSample

P = ProcIdentity


@pytest.mark.parametrize(("ident", "expected"), [
    (P("nginx", cgroup="/system.slice/nginx.service"), "nginx"),
    (P("firefox", cgroup="/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope"),
     "firefox"),
    (P("x", cgroup="/user.slice/user-1000.slice/user@1000.service/app.slice/"
                   "app-flatpak-org.mozilla.firefox-12345.scope"), "firefox"),
    (P("getty", cgroup="/system.slice/system-getty.slice/getty@tty1.service"), "getty"),
    (P("snap", cgroup="/system.slice/snap.firefox.firefox-1c2f3a.scope"), "firefox"),
    (P("bash", cgroup="/user.slice/user-1000.slice/session-3.scope", exe="/usr/bin/bash", cmdline=("-bash",)),
     "bash"),
    (P("python3", exe="/usr/bin/python3.11", cmdline=("python3", "-u", "/opt/etl/etl.py", "--port", "80")),
     "etl"),
    (P("python3", exe="/usr/bin/python3.11", cmdline=("python3", "-m", "http.server", "8000")), "http.server"),
    (P("python3", exe="/usr/bin/python3.11", cmdline=("python3", "-c", "print(1)")), "python3"),
    (P("node", exe="/usr/bin/node", cmdline=("node", "--max-old-space-size", "100", "/srv/api/server.js")),
     "api"),
    (P("java", exe="/usr/lib/jvm/bin/java", cmdline=("java", "-Xmx1g", "-cp", "a.jar", "org.x.Bootstrap", "start")),
     "Bootstrap"),
    (P("java", exe="/usr/lib/jvm/bin/java", cmdline=("java", "-jar", "/opt/kafka.jar")), "kafka"),
    (P("sh", exe="/usr/bin/dash", cmdline=("/bin/sh", "/usr/local/bin/backup.sh")), "backup"),
    (P("bash", exe="/usr/bin/bash", cmdline=("bash", "/dev/fd/3")), "bash"),
    (P("benchapp001", exe="/usr/bin/sleep", cmdline=("/tmp/bin/benchapp001", "3600")), "benchapp001"),
    (P("systemd-journal", exe="/usr/lib/systemd/systemd-journald", cmdline=("/usr/lib/systemd/systemd-journald",)),
     "systemd-journald"),
    (P("nginx", exe="/usr/sbin/nginx", cmdline=("nginx: worker process",)), "nginx"),
    (P("memfd:sealed-91", exe="/memfd:sealed-91173221a7ea", cmdline=("tools/binary_backend", "--uid", "0")),
     "binary_backend"),
    (P("myproc"), "myproc"),
    (P("Google Chrome H", exe="/Applications/Google Chrome.app/Contents/MacOS/x", bundle="Google Chrome"),
     "Google_Chrome"),
])
def test_default_names(ident: ProcIdentity, expected: str) -> None:
    assert default_name(ident) == expected


def test_units() -> None:
    assert unit_of_cgroup("/") is None
    assert unit_of_cgroup("/system.slice/docker-0123456789abcdef.scope") is None
    assert unit_of_cgroup("/user.slice/user-1000.slice/user@1000.service/init.scope") is None
    assert app_of_unit("app-org.gnome.Terminal-2a3b4c5d.scope") == "Terminal"
    assert app_of_unit("postgresql@15-main.service") == "postgresql"
    assert app_of_unit("app-gnome-org.gnome.Evince-5678.scope") == "Evince"
    assert app_of_unit("dbus\\x2dbroker.service") == "dbus-broker"


def test_script_of_inline_code_is_none() -> None:
    assert script_of("python3", ["-c", "x"]) is None
    assert script_of("node", ["-e", "1"]) is None
    assert script_of("bash", ["-c", "ls"]) is None
    assert script_of("python3", ["-W", "ignore", "tool.py"]) == "tool"


def rules(yaml_rules: list[dict]) -> Namer:
    return Namer(parse_config({"apps": yaml_rules}).apps)


def test_rules_first_match_wins_and_templates() -> None:
    namer = rules([
        {"name": "db-{1}", "cmdline": r"postgres: (\w+)"},
        {"name": "{user}-{comm}", "user": "^www-data$"},
        {"name": "{svc}", "cgroup": r"/(?P<svc>[a-z]+)\.service$"},
        {"name": "web", "comm": "^nginx$"},
    ])
    assert namer.name(P("postgres", cmdline=("postgres: checkpointer",))) == "db-checkpointer"
    assert namer.name(P("nginx", user="www-data")) == "www-data-nginx"
    assert namer.name(P("nginx", user="root")) == "web"
    assert namer.name(P("cron", cgroup="/system.slice/cron.service")) == "cron"
    assert namer.name(P("other", exe="/usr/bin/other")) == "other"


def test_rule_with_every_matcher_must_match_all() -> None:
    namer = rules([{"name": "x", "comm": "^a$", "exe": "/b$"}])
    assert namer.name(P("a", exe="/usr/bin/b")) == "x"
    assert namer.name(P("a", exe="/usr/bin/c")) == "a"


def test_exe_template_and_unit_template() -> None:
    namer = rules([{"name": "{exe}@{unit}", "cgroup": "service"}])
    assert namer.name(P("n", exe="/usr/sbin/nginx", cgroup="/system.slice/nginx.service")) == "nginx@nginx"


def test_fold_is_sticky() -> None:
    fold = AppFold(2)
    assert [fold("a"), fold("b"), fold("c"), fold("a")] == ["a", "b", OTHER, "a"]
    fold.release(["a"])
    assert fold("c") == OTHER  # folded once, folded for good
    assert fold("d") == "d"  # the freed slot goes to a new name
    assert fold(OTHER) == OTHER


class FakeSource:
    def __init__(self) -> None:
        self.idents = {ProcessId(10, 1): P("alpha"), ProcessId(11, 5): P("beta")}
        self.reads = 0

    def identity(self, pid: ProcessId) -> ProcIdentity | None:
        self.reads += 1
        return self.idents.get(pid)

    def start_token(self, pid: int) -> ProcessId | None:
        return next((p for p in self.idents if p.pid == pid), None)


def sample(pid: int, started: int, comm: str) -> ProcSample:
    return ProcSample(ProcessId(pid, started), 1, "S", 0.0, 0.0, 1, 0, 0.0, comm=comm)


def test_resolver_caches_per_process_and_renames_after_exec() -> None:
    source = FakeSource()
    resolver = AppResolver(source, Namer(), max_apps=10)  # type: ignore[arg-type]
    assert resolver.app_for(sample(10, 1, "alpha")) == "alpha"
    assert resolver.app_for(sample(10, 1, "alpha")) == "alpha"
    assert source.reads == 1
    source.idents[ProcessId(10, 1)] = P("gamma")  # the process exec'd: comm changed
    assert resolver.app_for(sample(10, 1, "gamma")) == "gamma"
    assert resolver.app_of_pid(11) == "beta"
    assert resolver.app_of_pid(99) is None
    assert resolver.app_for(sample(12, 1, "gone")) is None


def test_numbered_fields_come_from_the_first_matcher_with_groups() -> None:
    assert rules([{"name": "x-{0}", "comm": "^ngi"}]).name(P("nginx")) == "x-ngi"
    namer = rules([{"name": "{0}/{1}", "comm": "^(ng)inx$", "cmdline": "(a)(b)"}])
    assert namer.name(P("nginx", cmdline=("ab",))) == "nginx/ng"


def test_template_field_beyond_the_rendering_matcher_is_rejected() -> None:
    import pytest

    from atlas_exporter.config import ConfigError

    with pytest.raises(ConfigError, match=r"apps\[0\]\.name: unknown template field '\{2\}'"):
        parse_config({"apps": [{"name": "y-{2}", "comm": "(a)", "cmdline": "(b)(c)"}]})


# --- better default names -------------------------------------------------------------------

PY = "/usr/bin/python3.11"


@pytest.mark.parametrize(("cmdline", "cwd", "expected"), [
    (("python3", "-m", "http.server", "8000"), None, "http.server"),
    (("python3", "-m", "uvicorn", "app:app", "--workers", "2"), None, "uvicorn"),
    (("python3", "-u", "-m", "celery", "-A", "proj", "worker"), None, "celery"),
    (("python3", "-mpkg.tool"), None, "pkg.tool"),
    (("python3", "-m", "mypkg.__main__"), None, "mypkg"),
    (("python3", "main.py"), "/srv/billing", "billing"),
    (("python3", "./main.py"), "/srv/billing", "billing"),
    (("python3", "/srv/billing/main.py"), "/", "billing"),
    (("python3", "src/main.py"), "/srv/billing", "billing"),  # generic folders are passed over
    (("python3", "../billing/app.py"), "/srv/other", "billing"),
    (("python3", "manage.py", "runserver"), "/home/ann/shop", "shop"),
    (("python3", "/app/main.py"), None, "app"),  # only generic folders: the nearest is kept
    (("python3", "main.py"), None, "main"),  # no cwd (unreadable): the script's own name
    (("python3", "/srv/etl/etl.py"), None, "etl"),
    (("python3", "/srv/etl/__main__.py"), None, "etl"),
])
def test_python_defaults(cmdline: tuple[str, ...], cwd: str | None, expected: str) -> None:
    assert default_name(P("python3", exe=PY, cmdline=cmdline, cwd=cwd)) == expected


def test_main_py_by_relative_and_absolute_path_is_one_name() -> None:
    relative = P("python3", exe=PY, cmdline=("python3", "main.py"), cwd="/opt/invoices")
    absolute = P("python3", exe=PY, cmdline=("python3", "/opt/invoices/main.py"), cwd="/")
    assert default_name(relative) == default_name(absolute) == "invoices"


def files(tree: dict[str, str | bytes]):
    def read(path: str) -> bytes | None:
        data = tree.get(path)
        return data.encode() if isinstance(data, str) else data
    return read


def test_node_package_json_name_wins() -> None:
    read = files({"/srv/shop/package.json": '{"name": "@acme/shop-api", "version": "1.0.0"}',
                  "/srv/plain/package.json": '{"version": "1.0.0"}',
                  "/srv/bad/package.json": b"\xff{[",
                  "/srv/deep/package.json": "[" * 100000 + "]" * 100000})
    node = "/usr/bin/node"
    assert default_name(P("node", exe=node, cmdline=("node", "dist/server.js"), cwd="/srv/shop", read_file=read)) \
        == "shop-api"
    assert default_name(P("node", exe=node, cmdline=("node", "/srv/shop/lib/worker.js"), read_file=read)) \
        == "shop-api"
    # a package.json with no name, a corrupt one, a hostile one: the script's own name
    for folder in ("plain", "bad", "deep"):
        assert default_name(P("node", exe=node, cmdline=("node", "index.js"), cwd=f"/srv/{folder}",
                              read_file=read)) == folder
    assert default_name(P("node", exe=node, cmdline=("node", "/opt/tools/report.js"), read_file=read)) == "report"
    # a dependency's executable (npm runs `next start` through node_modules/.bin): the project's name
    read_deps = files({"/srv/shop/package.json": '{"name": "shop"}',
                       "/srv/shop/node_modules/next/package.json": '{"name": "next"}'})
    for script in ("/srv/shop/node_modules/.bin/next", "/srv/shop/node_modules/next/dist/bin/next"):
        assert default_name(P("node", exe=node, cmdline=("node", script, "start"), read_file=read_deps)) == "shop"
    assert default_name(P("node", exe=node, cmdline=("node", "/usr/lib/node_modules/typescript/bin/tsc"),
                          read_file=read_deps)) == "tsc"
    # npm retitles itself "npm start": named by the package it runs, or "npm", never with a space
    npm = P("npm start", exe=node, cmdline=("npm start",), cwd="/srv/shop/src", read_file=read)
    assert default_name(npm) == "shop-api"
    assert default_name(P("npm start", exe=node, cmdline=("npm start",), cwd="/nowhere", read_file=read)) == "npm"
    assert default_name(P("npm start", exe=node, cmdline=("npm start",))) == "npm"
    assert default_name(P("node", exe=node, cmdline=("node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "start"),
                          cwd="/srv/shop", read_file=read)) == "shop-api"
    assert default_name(P("node", exe=node, cmdline=("node", "/usr/bin/yarn", "dev"), cwd="/srv/x")) == "yarn"
    # npm's `sh -c "node server.js"` wrapper joins the package too
    wrapper = P("sh", exe="/usr/bin/dash", cmdline=("sh", "-c", "node server.js"), cwd="/srv/shop", read_file=read)
    assert default_name(wrapper) == "shop-api"


@pytest.mark.parametrize(("script", "expected"), [
    ("python3 /srv/etl/etl.py --full", "etl"),
    ("exec python3 /srv/etl/etl.py", "etl"),
    ("cd /srv/billing && python3 main.py >> /var/log/billing.log 2>&1", "billing"),
    ("cd /srv/billing; exec env PYTHONUNBUFFERED=1 nohup nice -n 5 python3 -u main.py", "billing"),
    ("FOO=1 BAR=2 timeout -s KILL 300 /usr/local/bin/backup --all", "backup"),
    ("bash /opt/jobs/job.sh", "job"),
    ("sudo -u app -E /usr/local/bin/reindex --all", "reindex"),
    ("/opt/jobs/job.sh 2>&1 | logger -t job", "job"),
    ("sleep 5; ./worker --queue mail", "worker"),
    ("set -e\nexport A=1\n. venv/bin/activate\npython3 -m celery -A proj worker", "celery"),
    ("while true; do ./poller; sleep 1; done", "poller"),
    ("$CMD --flag", "sh"),  # nothing to go by: the shell keeps its own name
    ("for f in *; do gzip $f; done", "sh"),
    ("echo 'unbalanced", "sh"),
    ("", "sh"),
])
def test_sh_c_wrapper_is_named_by_the_program_it_runs(script: str, expected: str) -> None:
    ident = P("sh", exe="/usr/bin/dash", cmdline=("/bin/sh", "-c", script), cwd="/home/ann")
    assert default_name(ident) == expected


def test_cron_jobs_are_named_by_what_they_run_not_by_cron() -> None:
    cgroup = "/system.slice/cron.service"
    assert default_name(P("cron", exe="/usr/sbin/cron", cmdline=("/usr/sbin/cron", "-f"), cgroup=cgroup)) == "cron"
    wrapper = P("sh", exe="/usr/bin/dash", cmdline=("/bin/sh", "-c", "cd /opt/reports && bash job.sh >> log 2>&1"),
                cgroup=cgroup)
    assert default_name(wrapper) == "job"
    assert default_name(P("bash", exe="/usr/bin/bash", cmdline=("bash", "job.sh"), cwd="/opt/reports",
                          cgroup=cgroup)) == "job"
    assert default_name(P("curl", exe="/usr/bin/curl", cmdline=("curl", "-s", "x"), cgroup=cgroup)) == "curl"


def test_names_have_no_spaces_or_control_characters() -> None:
    assert default_name(P("npm start", exe="/usr/local/bin/npm-x", cmdline=("npm start",))) == "npm"
    assert default_name(P("tab\there", cmdline=("tab\there",))) == "tab"
    assert default_name(P("x", cgroup="/system.slice/my\\x20app.service")) == "my_app"
    assert default_name(P("x", exe=PY, cmdline=("python3", "/srv/My  Project\x07/main.py"))) == "My_Project"
    assert default_name(P("Web Content", exe="/usr/lib/firefox/firefox", cmdline=("/usr/lib/firefox/firefox",
                                                                                 "-contentproc"))) == "Web_Content"
    namer = rules([{"name": "job-{1}", "cmdline": r"(?s)^run (.*)$"}])
    assert namer.name(P("run", cmdline=("run", "a b\nc"))) == "job-a_b_c"


# --- tree-aware grouping ----------------------------------------------------------------------

MP_SPAWN = ("python3", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
            "--multiprocessing-fork")
MP_TRACKER = ("python3", "-c", "from multiprocessing.resource_tracker import main;main(6)")
MP_FORKSERVER = ("python3", "-c", "from multiprocessing.forkserver import main; main(7, 8, ['__main__'], "
                 "**{'sys_path': ['/srv']})")


@pytest.mark.parametrize("cmdline", [MP_SPAWN, MP_TRACKER, MP_FORKSERVER])
def test_multiprocessing_helpers_join_their_parent(cmdline: tuple[str, ...]) -> None:
    ident = P("python3", exe=PY, cmdline=cmdline, ppid=100)
    assert Namer().name(ident, lambda: "uvicorn") == "uvicorn"
    assert Namer().name(ident) == "python3"  # no parent known: its own default name
    assert Namer().name(ident, lambda: "systemd") == "python3"  # never joins a process manager
    assert Namer().name(ident, lambda: None) == "python3"


def test_only_multiprocessing_own_helpers_are_helpers() -> None:
    loky = ("python3", "-m", "joblib.externals.loky.backend.popen_loky_posix", "--process-name", "LokyProcess-1",
            "--pipe", "5")
    assert Namer().name(P("python3", exe=PY, cmdline=loky, ppid=9), lambda: "trainer") == "trainer"
    user_code = ("python3", "-c", "from multiprocessing import Pool; Pool(2).map(print, [1])")
    assert Namer().name(P("python3", exe=PY, cmdline=user_code, ppid=9), lambda: "bash") == "python3"
    assert Namer().name(P("python3", exe=PY, cmdline=("python3", "-m", "http.server"), ppid=9),
                        lambda: "bash") == "http.server"


def test_parent_is_asked_only_when_needed() -> None:
    asked: list[int] = []

    def parent() -> str:
        asked.append(1)
        return "p"

    assert Namer().name(P("python3", exe=PY, cmdline=("python3", "/srv/a.py")), parent) == "a"
    assert asked == []
    assert rules([{"name": "{parent}-x", "parent": "^p$", "comm": "^c$"}]).name(P("c"), parent) == "p-x"
    assert asked == [1]


def test_crash_handlers_join_their_app() -> None:
    handler = P("chrome_crashpad", exe="/usr/lib/chromium/chrome_crashpad_handler",
                cmdline=("/usr/lib/chromium/chrome_crashpad_handler", "--monitor-self", "--database=/x"), ppid=1)
    assert Namer().name(handler, lambda: "my-browser") == "my-browser"
    # crashpad double-forks, so its parent is usually init: it is named by its install folder
    assert Namer().name(handler) == "chromium"
    assert Namer().name(handler, lambda: "systemd") == "chromium"
    electron = P("chrome_crashpad", exe="/usr/share/code/chrome_crashpad_handler",
                 cmdline=("/usr/share/code/chrome_crashpad_handler",))
    assert Namer().name(electron) == "code"
    unprivileged = P("chrome_crashpad", cmdline=("/usr/lib/chromium/chrome_crashpad_handler", "--no-periodic-tasks"))
    assert Namer().name(unprivileged) == "chromium"  # another user's exe link is unreadable: argv[0] tells
    bare = P("crashpad_handle", exe="/usr/bin/crashpad_handler", cmdline=("/usr/bin/crashpad_handler",))
    assert Namer().name(bare) == "crashpad_handler"


def test_parent_rule_groups_a_cron_jobs_children() -> None:
    namer = rules([{"name": "{parent}", "parent": "^(job|backup)$"}])
    curl = P("curl", exe="/usr/bin/curl", cmdline=("curl", "-s", "https://example.com"))
    assert namer.name(curl, lambda: "job") == "job"
    assert namer.name(curl, lambda: "cron") == "curl"
    assert namer.name(curl) == "curl"  # no parent: the parent matcher does not match


def test_resolver_names_the_parent_first_for_helpers() -> None:
    tree = {ProcessId(50, 1): P("python3", exe=PY, cmdline=("python3", "/srv/api/api.py"), ppid=1),
            ProcessId(51, 2): P("python3", exe=PY, cmdline=MP_FORKSERVER, ppid=50),
            ProcessId(52, 3): P("python3", exe=PY, cmdline=MP_FORKSERVER, ppid=51),  # a forkserver worker
            ProcessId(53, 4): P("python3", exe=PY, cmdline=MP_TRACKER, ppid=50)}
    source = FakeSource()
    source.idents = tree
    resolver = AppResolver(source, Namer(), max_apps=10)  # type: ignore[arg-type]
    assert resolver.app_for(sample(52, 3, "python3")) == "api"  # its parent and grandparent named first
    assert resolver.app_for(sample(53, 4, "python3")) == "api"
    assert resolver.app_for(sample(50, 1, "python3")) == "api"
    assert resolver.app_for(sample(51, 2, "python3")) == "api"


# --- rules: RE2, the parent matcher, bounded time ---------------------------------------------

def test_rules_are_re2_and_what_re2_cannot_compile_is_rejected_naming_the_rule() -> None:
    from atlas_exporter.config import ConfigError

    assert type(parse_config({"apps": [{"name": "x", "comm": "^x$"}]}).apps[0].comm).__module__.startswith("re2")
    for bad, reason in ((r"(?<=a)b", "invalid perl operator"), (r"(a)\1", "invalid escape sequence"),
                        ("a{1001}", "invalid repetition size"), ("(", "missing )")):
        with pytest.raises(ConfigError) as err:
            parse_config({"apps": [{"name": "ok", "comm": "^x$"}, {"name": "web", "cmdline": bad}]}, "f.yml")
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"f.yml: apps[1].cmdline: bad regular expression {bad!r} in rule 'web' "
                                  "(RE2 syntax): "), message
        assert reason in message
    with pytest.raises(ConfigError, match=r"apps\[0\]\.parent: bad regular expression"):
        parse_config({"apps": [{"name": "x", "parent": "(?=x)"}]})
    with pytest.raises(ConfigError, match=r"apps\[0\]\.name: app names cannot contain spaces"):
        parse_config({"apps": [{"name": "my app", "comm": "x"}]})


def test_backtracking_rule_is_linear_time() -> None:
    import time

    namer = rules([{"name": "evil", "cmdline": "(a+)+$"}])
    started = time.process_time()
    assert namer.name(P("sleep", exe="/usr/bin/sleep", cmdline=("a" * 34 + "!",))) == "sleep"
    assert namer.name(P("sleep", exe="/usr/bin/sleep", cmdline=("a" * 60_000 + "!",))) == "sleep"
    assert time.process_time() - started < 2.0


def test_rules_stop_after_the_time_budget() -> None:
    ticks = iter(range(1000))
    namer = Namer(parse_config({"apps": [{"name": f"r{i}", "comm": f"^nomatch{i}$"} for i in range(50)]
                                + [{"name": "late", "comm": "^x$"}]}).apps,
                  budget_seconds=10, clock=lambda: float(next(ticks)))
    assert namer.name(P("x")) == "x"  # cut short before the last rule: its default name
    assert namer.over_budget == 1


def test_readme_examples() -> None:
    """The table of real programs in the README's "How apps are named"."""
    pg_unit = "/system.slice/system-postgresql.slice/postgresql@15-main.service"
    pg = P("postgres", exe="/usr/lib/postgresql/15/bin/postgres", cmdline=("postgres: 15/main: checkpointer",))
    assert default_name(pg) == "postgres"
    pg.cgroup = pg_unit
    assert default_name(pg) == "postgresql"
    for title in ("nginx: master process /usr/sbin/nginx -g daemon on;", "nginx: worker process"):
        assert default_name(P("nginx", exe="/usr/sbin/nginx", cmdline=(title,))) == "nginx"
    venv = "/srv/shop/venv/bin"
    assert default_name(P("gunicorn", exe=PY, cmdline=(f"{venv}/python3", f"{venv}/gunicorn", "shop.wsgi", "-w",
                                                        "4"))) == "gunicorn"
    assert default_name(P("gunicorn: maste", exe=PY, cmdline=("gunicorn: master [shop.wsgi]",))) == "gunicorn"
    uvicorn = P("uvicorn", exe=PY, cmdline=(f"{venv}/python3", f"{venv}/uvicorn", "main:app", "--workers", "4"))
    assert Namer().name(uvicorn) == "uvicorn"
    assert Namer().name(P("python3", exe=PY, cmdline=("python3", "-m", "uvicorn", "main:app"))) == "uvicorn"
    assert Namer().name(P("python3", exe=PY, cmdline=MP_SPAWN, ppid=7), lambda: "uvicorn") == "uvicorn"
    chromium = "/usr/lib/chromium/chromium"
    for args in ((chromium, "--type=renderer"), (chromium, "--type=zygote")):
        assert Namer().name(P("chromium", exe=chromium, cmdline=args), lambda: "chromium") == "chromium"
    handler = P("chrome_crashpad", exe="/usr/lib/chromium/chrome_crashpad_handler",
                cmdline=("/usr/lib/chromium/chrome_crashpad_handler", "--monitor-self"), ppid=1)
    assert Namer().name(handler) == "chromium"
    cron = "/system.slice/cron.service"
    job = rules([{"name": "{parent}", "parent": "^(job|backup)$"}])
    wrapper = P("sh", exe="/usr/bin/dash", cmdline=("/bin/sh", "-c", "cd /opt/reports && bash job.sh >> job.log 2>&1"),
                cgroup=cron)
    assert job.name(wrapper, lambda: "cron") == "job"
    assert job.name(P("bash", exe="/usr/bin/bash", cmdline=("bash", "job.sh"), cgroup=cron, cwd="/opt/reports"),
                    lambda: "job") == "job"
    assert job.name(P("curl", exe="/usr/bin/curl", cmdline=("curl", "-s", "x"), cgroup=cron), lambda: "job") == "job"
    read = files({"/srv/shop/package.json": '{"name": "@acme/shop-api"}'})
    for ident in (P("npm start", exe="/usr/bin/node", cmdline=("npm start",), cwd="/srv/shop", read_file=read),
                  P("sh", exe="/usr/bin/dash", cmdline=("sh", "-c", "node server.js"), cwd="/srv/shop",
                    read_file=read),
                  P("node", exe="/usr/bin/node", cmdline=("node", "server.js"), cwd="/srv/shop", read_file=read)):
        assert default_name(ident) == "shop-api"
