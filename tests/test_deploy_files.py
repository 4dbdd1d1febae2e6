"""The deploy files: Prometheus config and rules, systemd unit, launchd plist, Kubernetes, Docker, compose.

Docker and Kubernetes cannot run here, so those files are checked structurally; the
Prometheus files go through promtool, the unit through `systemd-analyze verify`, and every
exporter flag a deploy file passes is checked against the real command line parser.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from atlas_exporter.config import parse_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "deploy"
PORT = 9858
CAPS = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN"}


@pytest.fixture(scope="module")
def cli_flags() -> set[str]:
    """Every long flag the exporter's parser accepts, read from its --help."""
    out = subprocess.run([sys.executable, "-m", "atlas_exporter", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    flags = set(re.findall(r"(--[a-z][\w.-]*)", out.stdout))
    assert {"--web.listen-address", "--path.procfs", "--config.file"} <= flags
    return flags


def check_flags(args: list[str], known: set[str]) -> None:
    for arg in args:
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        negated = flag.replace("--no-collector.", "--collector.", 1)
        assert flag in known or negated in known, f"unknown exporter flag {flag}"


def listen_port(args: list[str]) -> int | None:
    for i, arg in enumerate(args):
        if arg.startswith("--web.listen-address"):
            value = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
            return int(value.rsplit(":", 1)[1])
    return None


# --- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_config_scrapes_the_exporter_and_loads_the_rules() -> None:
    raw = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert {"alerts.yml", "recording.yml"} <= set(raw["rule_files"])
    jobs = {job["job_name"]: job for job in raw["scrape_configs"]}
    targets = [t for sc in jobs["atlas-exporter"]["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(f":{PORT}") for t in targets)


def test_prometheus_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    folder = DEPLOY / "prometheus"
    if not (folder / "alerts.yml").exists():
        # The alert rules are written separately; check the rest with an empty stand-in.
        for name in ("prometheus.yml", "recording.yml"):
            shutil.copy(folder / name, tmp_path / name)
        (tmp_path / "alerts.yml").write_text("groups: []\n", encoding="utf-8")
        folder = tmp_path
    result = subprocess.run([promtool, "check", "config", str(folder / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_recording_rules_pass_promtool(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "recording.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_compute_the_expected_values(promtool: str, tmp_path: Path) -> None:
    """promtool test rules against series with known rates (fixture recording_test.yml)."""
    shutil.copy(DEPLOY / "prometheus" / "recording.yml", tmp_path / "recording.yml")
    shutil.copy(FIXTURES / "recording_test.yml", tmp_path / "recording_test.yml")
    result = subprocess.run([promtool, "test", "rules", "recording_test.yml"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_test_fails_on_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "prometheus" / "recording.yml", tmp_path / "recording.yml")
    text = (FIXTURES / "recording_test.yml").read_text(encoding="utf-8")
    (tmp_path / "recording_test.yml").write_text(text.replace("value: 0.5", "value: 0.25", 1), encoding="utf-8")
    result = subprocess.run([promtool, "test", "rules", "recording_test.yml"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode != 0


# --- systemd ------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit((DEPLOY / "systemd" / "atlas-exporter.service").read_text(encoding="utf-8"))


def test_systemd_unit_is_hardened(unit: dict[str, dict[str, list[str]]]) -> None:
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    assert set(service["CapabilityBoundingSet"].split()) == CAPS
    assert set(service["AmbientCapabilities"].split()) == CAPS
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "SystemCallArchitectures": "native", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # The exporter must see every process: these would hide them.
    assert service.get("ProtectProc", "default") == "default"
    assert service.get("ProcSubset", "all") == "all"
    assert service.get("PrivateUsers", "no") == "no"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_runs_the_exporter(unit: dict[str, dict[str, list[str]]], cli_flags: set[str]) -> None:
    (exec_start,) = unit["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "atlas-exporter" and Path(argv[0]).is_absolute()
    check_flags(argv[1:], cli_flags)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart to exist: point it at a stand-in executable.
    stand_in = tmp_path / "atlas-exporter"
    stand_in.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stand_in.chmod(0o755)
    text = (DEPLOY / "systemd" / "atlas-exporter.service").read_text(encoding="utf-8")
    path = tmp_path / "atlas-exporter.service"
    path.write_text(text.replace("/usr/local/bin/atlas-exporter", str(stand_in)), encoding="utf-8")
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0"}
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, env=env)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "atlas-exporter.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr

    broken = tmp_path / "broken" / "atlas-exporter.service"
    broken.parent.mkdir()
    broken.write_text(path.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly"), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60, env=env)
    assert "atlas-exporter.service:" in result.stdout + result.stderr, "verify did not notice a bad value"


# --- launchd ------------------------------------------------------------------------------------


def _plist(name: str, home: str | None = None) -> dict:
    text = (DEPLOY / "launchd" / name).read_text(encoding="utf-8")
    if home is not None:  # what the documented sed does
        text = text.replace("/Users/USERNAME", home)
    return plistlib.loads(text.encode())


def _common_job_keys(plist: dict, cli_flags: set[str]) -> None:
    args = plist["ProgramArguments"]
    assert Path(args[0]).name == "atlas-exporter" and Path(args[0]).is_absolute()
    check_flags(args[1:], cli_flags)
    assert listen_port(args) == PORT
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert "/usr/bin" in plist["EnvironmentVariables"]["PATH"].split(":"), "nettop lives in /usr/bin"
    assert plist["StandardOutPath"] == plist["StandardErrorPath"]


def test_launchd_daemon_plist(cli_flags: set[str]) -> None:
    plist = _plist("io.atlas-exporter.plist")
    assert plist["Label"] == "io.atlas-exporter"
    _common_job_keys(plist, cli_flags)
    assert plist["UserName"] == "root"
    assert plist["EnvironmentVariables"]["HOME"] == "/var/root"
    assert plist["StandardOutPath"].startswith("/Library/Logs/")
    assert "LimitLoadToSessionType" not in plist
    assert not plist["ProgramArguments"][0].startswith("/Users/"), "root must not run a program a user can change"


def test_launchd_agent_plist(cli_flags: set[str]) -> None:
    """The LaunchAgent: no UserName, HOME and every path absolute inside the user's home after the sed."""
    home = "/Users/alice"
    plist = _plist("io.atlas-exporter.agent.plist", home)
    assert plist["Label"] == "io.atlas-exporter.agent" != _plist("io.atlas-exporter.plist")["Label"]
    _common_job_keys(plist, cli_flags)
    assert "UserName" not in plist and "GroupName" not in plist
    assert plist["LimitLoadToSessionType"] == "Aqua"  # loaded with launchctl bootstrap gui/$UID
    assert plist["EnvironmentVariables"]["HOME"] == home
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        assert plist[key].startswith(home + "/") or plist[key] == home, key
    assert plist["StandardOutPath"] == f"{home}/Library/Logs/atlas-exporter.log"
    assert plist["ProgramArguments"][0] == f"{home}/.atlas-exporter/bin/atlas-exporter"
    text = (DEPLOY / "launchd" / "io.atlas-exporter.agent.plist").read_text(encoding="utf-8")
    body = re.sub(r"<!--.*?-->", "", text[text.index("<plist"):], flags=re.S)
    assert "~" not in body and "$HOME" not in body, "launchd expands neither"
    assert "launchctl bootstrap gui/$(id -u)" in text and 's|/Users/USERNAME|$HOME|g' in text


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text(encoding="utf-8")))
    docs += list(yaml.safe_load_all((DEPLOY / "kubernetes" / "servicemonitor.yaml").read_text(encoding="utf-8")))
    by_kind = {d["kind"]: d for d in docs if d}
    assert len(by_kind) == len([d for d in docs if d]), "one object of each kind"
    for d in by_kind.values():
        assert d["apiVersion"] and d["metadata"]["name"]
    return by_kind


def test_daemonset_sees_the_host(k8s: dict[str, dict[str, Any]], cli_flags: set[str]) -> None:
    ds = k8s["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostPID"] is True
    (container,) = pod["containers"]
    args = container["args"]
    check_flags(args, cli_flags)
    procfs = next(a.split("=", 1)[1] for a in args if a.startswith("--path.procfs="))
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts[procfs].get("readOnly") is True
    assert volumes[mounts[procfs]["name"]]["hostPath"]["path"] == "/proc"
    assert listen_port(args) == PORT
    assert {p["containerPort"] for p in container["ports"]} == {PORT}


def test_daemonset_security_context(k8s: dict[str, dict[str, Any]]) -> None:
    (container,) = k8s["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {f"CAP_{c}" for c in sc["capabilities"]["add"]} == CAPS
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True


def test_daemonset_config_is_valid(k8s: dict[str, dict[str, Any]]) -> None:
    cm = k8s["ConfigMap"]
    (container,) = k8s["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    config_arg = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--config.file="))
    mount = next(m for m in container["volumeMounts"] if config_arg.startswith(m["mountPath"] + "/"))
    volume = next(v for v in k8s["DaemonSet"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    key = Path(config_arg).name
    parse_config(yaml.safe_load(cm["data"][key]), "configmap")  # raises ConfigError when invalid


def test_service_and_servicemonitor_select_the_pods(k8s: dict[str, dict[str, Any]]) -> None:
    ds, svc, sm = k8s["DaemonSet"], k8s["Service"], k8s["ServiceMonitor"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["metadata"]["namespace"] == ds["metadata"]["namespace"]
    (port,) = svc["spec"]["ports"]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["port"] == PORT and named[port["targetPort"]] == PORT
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    assert {e["port"] for e in sm["spec"]["endpoints"]} == {port["name"]}
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(PORT)


# --- Docker and compose -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    kinds = [k for k, _ in steps]
    assert kinds.count("FROM") == 1
    assert ("EXPOSE", str(PORT)) in steps
    users = [v for k, v in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(k == "RUN" and "pip install ." in v for k, v in steps)
    # pip install . needs the readme that pyproject names; the rest must be in the repository already
    readme = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"].get("readme")
    for k, v in steps:
        if k == "COPY":
            for src in v.split()[:-1]:
                assert src == readme or (REPO / src).exists(), f"COPY source {src} is not in the repository"
    copied = [src for k, v in steps if k == "COPY" for src in v.split()[:-1]]
    assert "pyproject.toml" in copied and "atlas_exporter" in copied and (readme is None or readme in copied)
    entry = next(v for k, v in steps if k == "ENTRYPOINT")
    assert entry == '["atlas-exporter"]'


def test_compose(cli_flags: set[str]) -> None:
    base = DEPLOY / "compose"
    compose = yaml.safe_load((base / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"atlas-exporter", "prometheus", "grafana"} <= set(services)
    exporter = services["atlas-exporter"]
    assert (base / exporter["build"]["context"] / exporter["build"]["dockerfile"]).is_file()
    assert exporter["pid"] == "host"
    assert {f"CAP_{c}" for c in exporter["cap_add"]} == CAPS and exporter["cap_drop"] == ["ALL"]
    check_flags(exporter["command"], cli_flags)
    procfs = next(a.split("=", 1)[1] for a in exporter["command"] if a.startswith("--path.procfs="))
    assert f"/proc:{procfs}:ro" in exporter["volumes"]
    assert listen_port(exporter["command"]) == PORT
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).exists(), f"{name} mounts {source}, which does not exist"
    prom = services["prometheus"]
    config = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    mount = next(v for v in prom["volumes"] if config.startswith(v.split(":")[1] + "/"))
    assert (base / mount.split(":")[0]).resolve() == (DEPLOY / "prometheus").resolve()
    # every service shares the host network, so the scrape target localhost:PORT reaches the exporter
    assert {s.get("network_mode") for s in services.values()} == {"host"}
    assert set(compose.get("volumes", {})) >= {v.split(":")[0] for s in services.values()
                                                for v in s.get("volumes", []) if not v.startswith(("/", "."))}


# --- documentation snippets ---------------------------------------------------------------------


def test_fleet_doc_prometheus_snippets_pass_promtool(promtool: str, tmp_path: Path) -> None:
    """The scrape, federation and remote-write examples in docs/fleet.md form a valid config."""
    text = (REPO / "docs" / "fleet.md").read_text(encoding="utf-8")
    merged: dict[str, list[Any]] = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        raw = yaml.safe_load(block if not block.startswith("  - ") else "scrape_configs:\n" + block)
        for key, value in raw.items():
            merged.setdefault(key, []).extend(value)
    jobs = merged["scrape_configs"]
    assert len(jobs) >= 5 and merged["remote_write"]
    # Debian's Prometheus build leaves out some service discoveries; check those for shape only.
    unsupported = ("consul_sd_configs", "kubernetes_sd_configs")
    for job in jobs:
        for key in unsupported:
            if key in job:
                assert isinstance(job.pop(key), list)
                job["static_configs"] = [{"targets": ["localhost:9858"]}]
    for i, job in enumerate(jobs):
        job["job_name"] = f"{job['job_name']}-{i}"
    for name in merged.get("rule_files", []):  # the central Prometheus behind agents loads the shipped rules
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    path = tmp_path / "fleet.yml"
    path.write_text(yaml.safe_dump(merged), encoding="utf-8")
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
