"""App naming: the default chain, configured rules with templates, and the max_apps fold."""

from __future__ import annotations

import pytest

from atlas_exporter.apps.naming import Namer, app_of_unit, default_name, script_of, unit_of_cgroup
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
    (P("python3", exe="/usr/bin/python3.11", cmdline=("python3", "-u", "/opt/app/server.py", "--port", "80")),
     "server"),
    (P("python3", exe="/usr/bin/python3.11", cmdline=("python3", "-m", "http.server", "8000")), "http"),
    (P("python3", exe="/usr/bin/python3.11", cmdline=("python3", "-c", "print(1)")), "python3"),
    (P("node", exe="/usr/bin/node", cmdline=("node", "--max-old-space-size", "100", "/srv/api/server.js")),
     "server"),
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
     "Google Chrome"),
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
