"""App names of real processes, started the ways people start them, through the whole exporter.

Each scenario runs real programs with unique names (other tests may run on the machine at the same time),
then the exporter runs once (`--once`) and its `atlas_app_processes` says which app each process
landed in. Everything runs twice: as root, and with the programs and the exporter as `nobody`
(who cannot read other users' cwd or exe links, so both are that user's own).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, parse_exposition, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")]

MP_APP = """\
import multiprocessing, os, sys, time

def pid(_):
    return os.getpid()

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:
        pool.map(pid, range(8))  # the workers are up
        print("ready", flush=True)
        sys.stdin.read()
"""

PARENT_OF_HANDLER = """\
import subprocess, sys
child = subprocess.Popen([sys.argv[1], "3600"])
print("ready", flush=True)
sys.stdin.read()
child.kill()
"""

READY_SECONDS = 120  # generous: the machine may be loaded

SLEEPER = "import sys, time\nprint('ready', flush=True)\nsys.stdin.read()\n"


@dataclass
class World:
    """Scenario processes, the user they run as, and what the exporter said about them."""

    root: Path
    tag: str
    python: list[str]  # how to run python as the scenario's user
    env: dict[str, str]
    exporter: list[str]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def start(self, argv: list[str], *, cwd: Path | str = "/", ready: bool = True,
              executable: str | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env, executable=executable, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.procs.append(proc)
        if ready:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], READY_SECONDS)
            assert readable, f"{argv} did not say it was ready within {READY_SECONDS}s"
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"{argv} did not start: rc={proc.poll()}"
        return proc

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def processes(self, app: str) -> float:
        return self.metrics.get(f'atlas_app_processes{{app="{app}"}}', 0.0)

    def stop(self) -> None:
        for proc in self.procs:
            # each scenario is a session of its own: its whole tree, and what it orphaned (the
            # detached crash handler), is in its process group even after its leader exited
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        # and anything still running from the scenarios' folder (detached children, whatever
        # became of their process groups)
        marker = str(self.root).encode()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if marker in Path(f"/proc/{name}/cmdline").read_bytes():
                        os.kill(int(name), signal.SIGKILL)
                except OSError:
                    pass


def tree_size(pid: int) -> int:
    """The number of processes in the tree under `pid`, itself included."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                text = Path(f"/proc/{name}/stat").read_bytes()  # a comm may be any bytes
            except OSError:
                continue
            ppid = int(text[text.rfind(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(name))
    count, todo = 0, [pid]
    while todo:
        count += 1
        todo.extend(children.get(todo.pop(), []))
    return count


def node_program(world: World) -> tuple[str, bool]:
    """A `node` to run: the real one when installed, else a copy of python named node (CI has no node)."""
    real = shutil.which("node")
    if real:
        return real, True
    fake = world.root / "bin" / "node"
    fake.parent.mkdir(exist_ok=True)
    shutil.copy(world.python[-1], fake)
    return str(fake), False


@pytest.fixture(scope="module", params=["root", "nobody"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("runs scenarios as root and as nobody")
    root = Path(tempfile.mkdtemp(prefix="atlas-naming-"))
    os.chmod(root, 0o755)
    tag = uuid.uuid4().hex[:8]
    if request.param == "root":
        python = [sys.executable]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        exporter = [sys.executable, "-m", "atlas_exporter"]
    else:
        prefix, env = request.getfixturevalue("nobody_python")
        env = dict(env)
        # the system python for the programs: a virtualenv's multiprocessing starts its helpers
        # with the base interpreter, which may sit in a folder nobody cannot enter (/root)
        system = shutil.which("python3", path="/usr/bin:/bin") or prefix[-1]
        python = [*prefix[:-1], system]
        exporter = [*prefix, "-m", "atlas_exporter"]
    w = World(root=root, tag=tag, python=python, env=env, exporter=exporter)
    try:
        start_scenarios(w)
        w.metrics = run_exporter(w)
        yield w
    finally:
        w.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_exporter(w: World, config: str | None = None) -> dict[str, float]:
    args = [*w.exporter, "--once", "--no-collector.network", "--no-collector.crash", "--no-collector.hang"]
    if config is not None:
        path = w.write(f"config-{uuid.uuid4().hex[:6]}.yml", config)
        os.chmod(path, 0o644)
        args += ["--config.file", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO if w.python[0] ==
                          sys.executable else "/", env={**w.env, "PYTHONPATH": w.env.get("PYTHONPATH", str(REPO))})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return parse_exposition(done.stdout)


def start_scenarios(w: World) -> None:
    tag, py = w.tag, w.python
    # multiprocessing: spawn (workers and the resource tracker) and forkserver (its server too)
    for method in ("spawn", "forkserver"):
        script = w.write(f"mp/mp{method}{tag}.py", MP_APP)
        w.start([*py, str(script), method])
    # a shell wrapper that stays (the `; true` keeps dash from exec'ing the program)
    wrapped = w.write(f"wrap/wrapped{tag}.py", SLEEPER)
    w.start([*py[:-1], "/bin/sh", "-c", f"'{py[-1]}' '{wrapped}'; true"])
    # python -m: a module of a package, run from the folder that holds the package
    w.write(f"mod/pkg{tag}/__init__.py", "")
    w.write(f"mod/pkg{tag}/svc.py", SLEEPER)
    w.start([*py, "-m", f"pkg{tag}.svc"], cwd=w.root / "mod")
    w.start([*py, "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=w.root, ready=False)
    # main.py by a relative path, by an absolute one, and by ./ after a cd in a shell
    folder = w.root / f"svc{tag}"
    w.write(f"svc{tag}/main.py", SLEEPER)
    w.start([*py, "main.py"], cwd=folder)
    w.start([*py, str(folder / "main.py")], cwd="/")
    w.start([*py[:-1], "/bin/sh", "-c", f"cd '{folder}' && exec '{py[-1]}' ./main.py"], cwd="/tmp")
    w.start([*py[:-1], "/usr/bin/env", "nohup", py[-1], "main.py"], cwd=folder)
    # a cron-like job: `sh -c 'cd DIR && bash job.sh'` whose script starts two children
    w.write(f"jobs/job{tag}.sh", "sleep 3600 &\nsleep 3600 &\necho ready\nwait\n")
    w.start([*py[:-1], "/bin/sh", "-c", f"cd '{w.root}/jobs' && bash job{tag}.sh; true"])
    # a crash handler started by its application, and one orphaned (crashpad double-forks)
    handler_dir = w.root / f"browser{tag}"
    handler_dir.mkdir()
    handler = handler_dir / "chrome_crashpad_handler"
    shutil.copy("/bin/sleep", handler)
    parent = w.write(f"browser{tag}/browser{tag}.py", PARENT_OF_HANDLER)
    w.start([*py, str(parent), str(handler)])
    w.start([*py[:-1], "/bin/sh", "-c", f"'{handler}' 3600 & echo ready"])
    # an npm-like launcher (node titled "npm start", as npm titles itself) that runs
    # `sh -c "node src/server.js"` in the package's folder, as npm does
    node, real = node_program(w)
    app = w.root / f"web{tag}"
    w.write(f"web{tag}/package.json", json.dumps({"name": f"@acme/web{tag}", "version": "1.0.0"}))
    if real:
        w.write(f"web{tag}/src/server.js", "console.log('ready'); setInterval(() => {}, 1000);\n")
        code = ("process.title = 'npm start'; const {spawn} = require('child_process');"
                "spawn('sh', ['-c', 'node src/server.js; true'], {stdio: 'inherit'}); process.stdin.resume();")
        flag = "-e"
    else:
        w.write(f"web{tag}/src/server.js", SLEEPER)
        code = "import subprocess, sys; subprocess.Popen(['sh', '-c', 'node src/server.js; true']); sys.stdin.read()"
        flag = "-c"
        w.env["PATH"] = f"{node.rsplit('/', 1)[0]}:{w.env['PATH']}"
    # argv[0] "npm start" (exec'd from python, so that it works under setpriv too)
    launcher = w.start([*py, "-c", "import os, sys; os.execv(sys.argv[1], sys.argv[2:])", node, "npm start", flag,
                        code], cwd=app)
    wait_for(lambda: tree_size(launcher.pid) >= 3, timeout=30, message="the launcher's children")


def test_multiprocessing_workers_are_in_their_programs_app(world: World) -> None:
    for method in ("spawn", "forkserver"):
        app = f"mp{method}{world.tag}"
        main = next(p for p in world.procs if p.args[-1] == method)
        expected = tree_size(main.pid)  # setpriv exec's the program: its pid is the program's
        # the program, 2 workers and the resource tracker (and the forkserver)
        assert expected >= (5 if method == "forkserver" else 4)
        assert world.processes(app) == expected, app


def test_sh_c_wrapper_and_its_program_are_one_app(world: World) -> None:
    assert world.processes(f"wrapped{world.tag}") == 2


def test_python_m_is_named_by_its_module(world: World) -> None:
    assert world.processes(f"pkg{world.tag}.svc") == 1
    assert world.processes("http.server") >= 1  # others on the machine may serve too
    assert world.processes("http") == 0


def test_main_py_by_relative_and_absolute_path_gives_one_app(world: World) -> None:
    assert world.processes(f"svc{world.tag}") == 4


def test_crash_handlers_join_their_application(world: World) -> None:
    assert world.processes(f"browser{world.tag}") == 3  # the browser, its handler, the orphaned handler
    assert world.processes("chrome_crashpad_handler") == 0


def test_node_launcher_wrapper_and_server_are_the_package(world: World) -> None:
    assert world.processes(f"web{world.tag}") == 3, {k: v for k, v in world.metrics.items() if "processes" in k}
    assert not any(" " in key.split('app="', 1)[-1] for key in world.metrics if 'app="' in key)


def test_a_job_wrapper_is_the_job_and_a_parent_rule_groups_its_children(world: World) -> None:
    app = f"job{world.tag}"
    assert world.processes(app) == 2  # the sh -c wrapper and bash job.sh; its sleeps are `sleep`
    metrics = run_exporter(world, f"apps:\n  - name: '{{parent}}'\n    parent: '^job{world.tag}$'\n")
    assert metrics.get(f'atlas_app_processes{{app="{app}"}}') == 4


def test_backtracking_rule_does_not_freeze_the_exporter(world: World) -> None:
    """A rule that backtracks for ever in Python's `re`; RE2 answers at once."""
    hostile = "a" * 34 + "!"
    proc = subprocess.Popen([hostile, "3600"], executable="/bin/sleep", start_new_session=True)
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes() == hostile.encode() + b"\0" + b"3600\0",
                 message="the hostile command line")
        started = time.monotonic()
        metrics = run_exporter(world, "apps:\n  - name: evil\n    cmdline: '(a+)+$'\n"
                                      f"  - name: hostile{world.tag}\n    cmdline: '^a{{34}}!'\n")
        assert time.monotonic() - started < 60
        assert metrics.get(f'atlas_app_processes{{app="hostile{world.tag}"}}') == 1
    finally:
        proc.kill()
        proc.wait()
