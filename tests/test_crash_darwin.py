"""macOS DiagnosticReports: parsers on real-format fixtures, and the watcher on a fake folder tree."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from atlas_exporter.collectors.crash import reports_darwin as rd
from atlas_exporter.collectors.crash import source_darwin as cd
from atlas_exporter.collectors.process.bundles_darwin import BundleNamer
from atlas_exporter.model import ProcIdentity, Snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "crash"


def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_parse_ips_segv():
    report = rd.parse_ips(_text("ips_macos12_segv.ips"))
    assert report is not None
    assert report.kind == "crash" and report.reason == "SIGSEGV"
    assert report.report_id == "02F8E982-2985-4720-946D-B4ECDE40DC2C"
    assert (report.proc_name, report.pid) == ("CrashingTest", 1710)
    assert report.proc_path == "/Users/USER/Desktop/*/CrashingTest"
    assert report.time == pytest.approx(1659526604.3125)  # captureTime 2022-08-03 20:36:44.3125 +0900


def test_parse_ips_sigill_uses_header_name():
    report = rd.parse_ips(_text("ips_macos12_sigill.ips"))
    assert report is not None
    assert report.reason == "SIGILL" and report.proc_name == "CrashingInAnotherTargetTest" and report.pid is None
    assert report.time == pytest.approx(1659526676.0)  # header timestamp


def test_parse_ips_bundle_without_signal():
    report = rd.parse_ips(_text("ips_macos26_bundle.ips"))
    assert report is not None
    assert report.bundle_id == "com.example.MarkdownEditor" and report.reason == "other"
    assert report.proc_path.endswith("MarkdownEditor.app/Contents/MacOS/MarkdownEditor")


def test_parse_ips_termination_indicator_fallback():
    header = json.dumps({"bug_type": "309", "incident_id": "X-1", "app_name": "A"})
    body = json.dumps({"procName": "A", "termination": {"namespace": "SIGNAL", "indicator": "Abort trap: 6"}})
    assert rd.parse_ips(header + "\n" + body).reason == "SIGABRT"


def test_parse_ips_watchdog_409_is_a_crash():
    report = rd.parse_ips(_text("ips_watchdog_409.ips"))
    assert (report.kind, report.reason, report.proc_name, report.pid) == ("crash", "watchdog", "WindowServer", 154)
    assert report.time == pytest.approx(1710144751.512)  # captureTime 2024-03-11 09:12:31.5120 +0100
    # the header alone is enough for a watchdog report; a plain crash needs its body
    header = _text("ips_watchdog_409.ips").splitlines()[0]
    assert rd.parse_ips(header + "\nnot json").reason == "watchdog"
    with pytest.raises(rd.ReportError):
        rd.parse_ips(header.replace('"409"', '"309"') + "\nnot json")


@pytest.mark.parametrize("bug_type", ["11", "12", "228", "288", "308", "509", "211", "298", 309.5, "x" * 100])
def test_parse_ips_other_types_are_unknown_not_guessed(bug_type):
    text = json.dumps({"bug_type": bug_type, "incident_id": "H-1", "app_name": "Slow"}) + "\n{}"
    with pytest.raises(rd.UnknownType):
        rd.parse_ips(text)


def test_parse_ips_stackshot_is_unknown():
    with pytest.raises(rd.UnknownType):
        rd.parse_ips(_text("ips_stackshot_288.ips"))


def test_parse_ips_bundle_id_from_bundle_info():
    report = rd.parse_ips(_text("ips_redacted_display_name.ips"))
    assert (report.bundle_id, report.reason, report.pid) == ("org.example.ViewerPro", "SIGABRT", 4321)
    assert report.proc_path == "/Users/USER/Applications/ViewerPro.app/Contents/MacOS/ViewerPro"


@pytest.mark.parametrize("name", ["malformed_header.ips", "truncated_body.ips"])
def test_parse_ips_malformed(name):
    with pytest.raises(rd.ReportError):
        rd.parse_ips(_text(name))


def test_parse_legacy_crash():
    report = rd.parse_crash_text(_text("crash_macos10_15.crash"))
    assert (report.kind, report.reason, report.proc_name, report.pid) == ("crash", "SIGSEGV", "CrashingTest", 8256)
    assert report.bundle_id == "CrashingTest"
    assert report.time == pytest.approx(1617417704.312)
    assert report.report_id.startswith("sha1:")  # legacy reports carry no incident id
    with pytest.raises(rd.ReportError):
        rd.parse_crash_text("hello\n")


def test_parse_hang_text():
    report = rd.parse_hang_text(_text("hang_macos12.hang"))
    assert (report.kind, report.proc_name, report.pid) == ("hang", "RedLemon", 27952)
    assert report.report_id == "A98C24B4-1E32-4D66-B89B-69F59C6F98D7"
    assert report.proc_path.endswith("RedLemon.app/Contents/MacOS/RedLemon")
    with pytest.raises(rd.ReportError):
        rd.parse_hang_text(_text("hang_macos12.hang").replace("Event:            hang", "Event:            cpu usage"))


def _naming(ident: ProcIdentity) -> str:
    """Stand-in for the naming rules: the bundle, else the process name."""
    return ident.bundle or ident.comm


NAMING = cd.naming_with_bundles(_naming, lambda exe: exe.split(".app/")[0].rsplit("/", 1)[-1]
                                if exe and ".app/" in exe else None)


@pytest.fixture
def tree(tmp_path):
    user = tmp_path / "home" / "Library" / "Logs" / "DiagnosticReports"
    system = tmp_path / "Library" / "Logs" / "DiagnosticReports"
    for folder in (user, user / "Retired", system):
        folder.mkdir(parents=True)
    return tmp_path, user, system


def _source(tmp_path, user, system, **kw):
    folders = [user, user / "Retired", system, system / "Retired"]
    kw.setdefault("state_file", tmp_path / "state" / "seen.json")
    kw.setdefault("all_users", False)
    kw.setdefault("bundles", BundleNamer())
    return cd.DarwinCrashSource(NAMING, folders=folders, poll_interval_seconds=3600, **kw)


def _families(source):
    return {m.name: {tuple(s.labels.values()): s.value for s in m.samples if not s.name.endswith("_created")}
            for m in source.collect(Snapshot(wall_time=0.0, monotonic=0.0))}


def test_watcher_counts_each_report_once_across_retired_and_restarts(tree):
    tmp_path, user, system = tree
    source = _source(tmp_path, user, system)
    source.start()
    try:
        shutil.copy(FIXTURES / "ips_macos12_segv.ips", user / "CrashingTest-2022-08-03-203647.ips")
        shutil.copy(FIXTURES / "ips_macos26_bundle.ips", user / "MarkdownEditor-2026-05-26-161145.ips")
        shutil.copy(FIXTURES / "crash_macos10_15.crash", user / "CrashingTest_2021-04-03-114144_host.crash")
        shutil.copy(FIXTURES / "hang_macos12.hang", system / "RedLemon_2025-12-17-190041_Mac.hang")
        shutil.copy(FIXTURES / "ips_stackshot_288.ips", system / "stacks-2022-08-03-204000.ips")
        shutil.copy(FIXTURES / "ips_watchdog_409.ips", system / "WindowServer-2024-03-11-091233.ips")
        assert source.poll() == 5
        # macOS moves reports to Retired/: same incident, not a new crash
        os.rename(user / "CrashingTest-2022-08-03-203647.ips", user / "Retired" / "CrashingTest-2022-08-03-203647.ips")
        assert source.poll() == 0
        fams = _families(source)
        assert fams["atlas_app_crashes"] == {("CrashingTest", "SIGSEGV"): 2, ("MarkdownEditor", "other"): 1,
                                             ("WindowServer", "watchdog"): 1}
        assert fams["atlas_app_hangs"] == {("RedLemon",): 1}
        assert fams["atlas_crash_reports_skipped"][("unknown_type",)] == 1  # the stackshot
        assert fams["atlas_app_last_crash_timestamp_seconds"][("CrashingTest",)] == pytest.approx(1659526604.3125)
        assert fams["atlas_crash_source_active"] == {("diagnostic_reports",): 1.0}
    finally:
        source.stop()
    # a restart reads the state file: nothing is counted again, a new report is
    again = _source(tmp_path, user, system)
    again.start()
    try:
        assert again.book.crashes() == {}
        shutil.copy(FIXTURES / "ips_macos12_sigill.ips", user / "CrashingInAnotherTargetTest-2022-08-03-203756.ips")
        assert again.poll() == 1
        assert again.book.crashes() == {("CrashingInAnotherTargetTest", "SIGILL"): 1}
    finally:
        again.stop()


def test_first_run_remembers_existing_reports_without_counting(tree):
    tmp_path, user, system = tree
    shutil.copy(FIXTURES / "ips_macos12_segv.ips", user / "CrashingTest-2022-08-03-203647.ips")
    source = _source(tmp_path, user, system)
    source.start()
    try:
        assert source.book.crashes() == {}
        assert (tmp_path / "state" / "seen.json").exists()
        shutil.copy(FIXTURES / "ips_macos12_sigill.ips", system / "CrashingInAnotherTargetTest-2022-08-03-2.ips")
        assert source.poll() == 1
    finally:
        source.stop()


def test_malformed_huge_and_symlinked_reports_are_skipped(tree, tmp_path):
    _, user, system = tree
    source = _source(tmp_path, user, system, max_report_bytes=4096)
    source.start()
    try:
        shutil.copy(FIXTURES / "malformed_header.ips", user / "Broken-2022-08-03-000000.ips")
        shutil.copy(FIXTURES / "truncated_body.ips", user / "Truncated-2022-08-03-000000.ips")
        huge = (FIXTURES / "ips_macos12_segv.ips").read_text().replace(
            '"faultingThread" : 0', '"faultingThread" : 0, "pad" : "' + "x" * 10000 + '"')
        (user / "Huge-2022-08-03-000000.ips").write_text(huge.replace("02F8E982", "AAAAAAAA"))
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        shutil.copy(FIXTURES / "ips_macos26_bundle.ips", outside / "x.ips")
        (user / "Linked-2026-05-26-161145.ips").symlink_to(outside / "x.ips")
        (system / "Retired").symlink_to(outside)  # a symlinked folder is not followed either
        (user / "notes.txt").write_text("not a report")
        assert source.poll() == 0
        fams = _families(source)
        assert fams["atlas_crash_reports_skipped"] == {("malformed",): 2, ("too_large",): 1, ("unreadable",): 0,
                                                       ("unknown_type",): 0}
        assert fams["atlas_app_crashes"] == {}
        assert source.poll() == 0  # unchanged files are not read or counted again
        assert _families(source)["atlas_crash_reports_skipped"][("malformed",)] == 2
    finally:
        source.stop()


def test_no_readable_folder_is_reported(tmp_path):
    source = cd.DarwinCrashSource(NAMING, folders=[tmp_path / "missing"], state_file=None,
                                  poll_interval_seconds=3600, all_users=False)
    assert source.statuses()[0].active is False
    source.start()
    try:
        status = source.statuses()[0]
        assert status.name == "diagnostic_reports" and not status.active and "no report folder" in status.reason
    finally:
        source.stop()


def test_report_folders_and_factory(tmp_path):
    folders = cd.report_folders(["/extra"], home=str(tmp_path))
    assert folders[:4] == [tmp_path / "Library/Logs/DiagnosticReports",
                           tmp_path / "Library/Logs/DiagnosticReports/Retired",
                           Path("/Library/Logs/DiagnosticReports"), Path("/Library/Logs/DiagnosticReports/Retired")]
    assert folders[4:] == [Path("/extra"), Path("/extra/Retired")]
    from atlas_exporter.config import parse_config

    config = parse_config({"crash": {"report_dirs": [str(tmp_path / "r")], "state_file": str(tmp_path / "s.json")}})
    from atlas_exporter.apps.naming import Namer
    from atlas_exporter.apps.resolver import AppResolver

    resolver = AppResolver(object(), Namer(config.apps), max_apps=10)  # type: ignore[arg-type]
    source = cd.make_crash_source(config, Path("/proc"), resolver)
    assert source is not None and source.name == "crash"
    assert tmp_path / "r" in source.folders and source.seen.path == tmp_path / "s.json"


def test_default_naming_uses_bundle_folder():
    naming = cd.default_naming()
    ident = ProcIdentity(comm="MarkdownEditor",
                         exe="/Users/USER/Documents/*/Markdown Editor.app/Contents/MacOS/MarkdownEditor")
    assert naming(ident) == "Markdown_Editor"  # app names hold no spaces


def test_no_hang_zeros_while_no_report_folder_is_readable(tmp_path):
    from atlas_exporter.model import AppView

    source = _source(tmp_path, tmp_path / "missing", tmp_path / "missing-too")
    source.start()
    try:
        assert not source.statuses()[0].active
        snapshot = Snapshot(wall_time=0.0, monotonic=0.0, apps={"Safari": AppView(name="Safari")})
        families = {m.name: m.samples for m in source.collect(snapshot)}
        assert families["atlas_app_hangs"] == []
        assert families["atlas_crash_source_active"][0].value == 0.0
    finally:
        source.stop()


def test_linux_and_macos_crash_families_share_one_table(tmp_path):
    from atlas_exporter.collectors.crash.source_linux import LinuxCrashSource

    darwin = {m.name: (m.type, m.documentation) for m in _source(tmp_path, tmp_path, tmp_path).collect(
        Snapshot(wall_time=0.0, monotonic=0.0))}
    linux = {m.name: (m.type, m.documentation) for m in LinuxCrashSource(lambda pid: None).collect(None)}
    assert set(darwin) - set(linux) == {"atlas_app_hangs"}
    assert all(darwin[name] == linux[name] for name in linux)


# --- a LaunchDaemon (root) watches every user's folder ------------------------------------------

INFO_PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>CFBundleIdentifier</key><string>org.example.ViewerPro</string>
<key>CFBundleName</key><string>ViewerPro</string>
<key>CFBundleDisplayName</key><string>Viewer Pro Studio</string>
</dict></plist>
"""


def _bundle(root: Path) -> Path:
    """A ViewerPro.app whose display name differs from its folder name; returns its executable."""
    contents = root / "ViewerPro.app" / "Contents"
    (contents / "MacOS").mkdir(parents=True)
    (contents / "Info.plist").write_text(INFO_PLIST)
    exe = contents / "MacOS" / "ViewerPro"
    exe.write_text("")
    return exe


@pytest.fixture
def users(tmp_path):
    """A fake /Users with alice (a report folder and Retired/), bob (Retired only), and Shared (none)."""
    root = tmp_path / "Users"
    for folder in (root / "alice" / cd.USER_FOLDER / "Retired", root / "bob" / cd.USER_FOLDER / "Retired",
                   root / "Shared"):
        folder.mkdir(parents=True)
    system = tmp_path / "Library" / "Logs" / "DiagnosticReports"
    system.mkdir(parents=True)
    return root, system


def _daemon(tmp_path, root, system, **kw):
    kw.setdefault("bundles", BundleNamer())
    kw.setdefault("state_file", tmp_path / "seen.json")
    return cd.DarwinCrashSource(NAMING, folders=[system, system / "Retired"],
                                poll_interval_seconds=3600, all_users=True, users_root=root,
                                home=tmp_path / "var" / "root", **kw)


def test_daemon_watches_every_users_folder_and_says_which(tmp_path, users):
    root, system = users
    source = _daemon(tmp_path, root, system)
    source.start()
    try:
        alice = root / "alice" / cd.USER_FOLDER
        shutil.copy(FIXTURES / "ips_macos12_segv.ips", alice / "CrashingTest-2022-08-03-203647.ips")
        shutil.copy(FIXTURES / "ips_macos12_sigill.ips", root / "bob" / cd.USER_FOLDER / "Retired" / "C-1.ips")
        shutil.copy(FIXTURES / "ips_watchdog_409.ips", system / "WindowServer-2024-03-11-091233.ips")
        assert source.poll() == 3
        assert source.book.crashes() == {("CrashingTest", "SIGSEGV"): 1, ("CrashingInAnotherTargetTest", "SIGILL"): 1,
                                         ("WindowServer", "watchdog"): 1}
        watched = source.watched_folders()
        assert watched == [str(system), str(alice), str(alice / "Retired"), str(root / "bob" / cd.USER_FOLDER),
                           str(root / "bob" / cd.USER_FOLDER / "Retired")]
        status = source.statuses()[0]
        assert status.active and status.details == tuple(f"watching {f}" for f in watched)
        # a user created after the start is picked up at the next poll
        carol = root / "carol" / cd.USER_FOLDER
        carol.mkdir(parents=True)
        shutil.copy(FIXTURES / "ips_macos26_bundle.ips", carol / "MarkdownEditor-2026-05-26-161145.ips")
        assert source.poll() == 1
        assert str(carol) in source.watched_folders()
    finally:
        source.stop()


def test_daemon_does_not_follow_a_users_symlinked_folder(tmp_path, users):
    root, system = users
    elsewhere = tmp_path / "private"
    (elsewhere / "Logs" / "DiagnosticReports").mkdir(parents=True)
    shutil.copy(FIXTURES / "ips_macos12_segv.ips", elsewhere / "Logs" / "DiagnosticReports" / "C-1.ips")
    (root / "mallory").mkdir()
    (root / "mallory" / "Library").symlink_to(elsewhere)  # the user owns her home and can point Library anywhere
    source = _daemon(tmp_path, root, system, state_file=None)
    source.start()
    try:
        assert source.book.crashes() == {}
        assert not any("mallory" in f for f in source.watched_folders())
        assert "mallory" in source.statuses()[0].reason and "symlink" in source.statuses()[0].reason
    finally:
        source.stop()


def test_an_agent_watches_only_its_own_folders(tmp_path, users):
    root, system = users
    source = cd.DarwinCrashSource(NAMING, folders=[system], state_file=None, poll_interval_seconds=3600,
                                  all_users=False, users_root=root, bundles=BundleNamer())
    source.start()
    try:
        assert source.watched_folders() == [str(system)]
    finally:
        source.stop()


def test_redacted_report_is_named_like_the_live_process_by_bundle_id(tmp_path):
    from atlas_exporter.apps.naming import Namer

    namer = Namer(())
    bundles = BundleNamer()
    live_exe = _bundle(tmp_path / "Applications")
    live = ProcIdentity(comm="ViewerPro", exe=str(live_exe), bundle=bundles.name_for_exe(str(live_exe)))
    live_app = namer.name(live)
    assert live_app == namer.name(ProcIdentity(comm="x", bundle="Viewer Pro Studio"))  # the display name
    reports = tmp_path / "reports"
    reports.mkdir()
    shutil.copy(FIXTURES / "ips_redacted_display_name.ips", reports / "ViewerPro-2025-06-02-140310.ips")
    source = cd.DarwinCrashSource(namer.name, folders=[reports], state_file=None, poll_interval_seconds=3600,
                                  all_users=False, bundles=bundles)
    source.start()
    try:
        assert source.book.crashes() == {(live_app, "SIGABRT"): 1}  # joins the CPU series on app
    finally:
        source.stop()
    # without the live name, the folder name would have been used
    alone = cd.DarwinCrashSource(namer.name, folders=[reports], state_file=None, all_users=False,
                                 bundles=BundleNamer())
    report = cd.read_report(reports / "ViewerPro-2025-06-02-140310.ips")
    assert namer.name(alone.identity(report)) == namer.name(ProcIdentity(comm="x", bundle="ViewerPro"))


def test_daemon_reads_the_bundle_in_the_reporting_users_home(tmp_path, users):
    """As root, `/Users/USER/...` is the home of the folder's owner: its Info.plist gives the display name."""
    from atlas_exporter.apps.naming import Namer

    root, system = users
    _bundle(root / "alice" / "Applications")
    shutil.copy(FIXTURES / "ips_redacted_display_name.ips", root / "alice" / cd.USER_FOLDER / "ViewerPro-1.ips")
    bundles = BundleNamer()
    source = cd.DarwinCrashSource(Namer(()).name, folders=[system], state_file=None, poll_interval_seconds=3600,
                                  all_users=True, users_root=root, bundles=bundles)
    source.start()
    try:
        display = Namer(()).name(ProcIdentity(comm="x", bundle="Viewer Pro Studio"))
        assert source.book.crashes() == {(display, "SIGABRT"): 1}
        assert bundles.name_for_bundle_id("org.example.ViewerPro") == "Viewer Pro Studio"
    finally:
        source.stop()


def test_unredact():
    assert rd.unredact("/Users/USER/Applications/A.app/Contents/MacOS/A", Path("/Users/alice")) == \
        "/Users/alice/Applications/A.app/Contents/MacOS/A"
    assert rd.unredact("/Applications/A.app/Contents/MacOS/A", Path("/Users/alice")) == \
        "/Applications/A.app/Contents/MacOS/A"
    assert rd.unredact("/Users/USER/x", None) == "/Users/USER/x"


def test_report_paths_with_dot_dot_are_not_read(tmp_path):
    """A report's procPath is its writer's text: root does not read an Info.plist it points outside with '..'."""
    reads = []
    bundles = BundleNamer(read=lambda path: reads.append(path) or b"")
    source = cd.DarwinCrashSource(NAMING, folders=[], state_file=None, all_users=False, bundles=bundles)
    report = rd.Report(kind="crash", report_id="x", proc_name="Secret", bundle_id=None, pid=1, reason="other",
                       time=None, proc_path="/Users/USER/../../private/var/root/Secret.app/Contents/MacOS/Secret")
    assert source.identity(report, Path("/Users/alice")).bundle is None and reads == []


def test_status_page_lists_the_watched_folders(tmp_path, users):
    from atlas_exporter.exporter.status import StatusPage

    root, system = users
    source = _daemon(tmp_path, root, system, state_file=None)
    source.start()
    try:
        page = StatusPage(lambda: Snapshot(wall_time=0.0, monotonic=0.0), source.statuses,
                          platform_name="darwin").render()
    finally:
        source.stop()
    for folder in (system, root / "alice" / cd.USER_FOLDER, root / "bob" / cd.USER_FOLDER / "Retired"):
        assert f"watching {folder}" in page
    assert "watching " + str(root / "Shared") not in page


def test_crash_and_cpu_series_join_on_app_through_the_resolver(tmp_path):
    """The live process (macOS source over fakes) and its redacted crash report get the same `app` label."""
    from test_darwin_process import FakeLibProc, FakeProc, FakeTable

    from atlas_exporter.apps.naming import Namer
    from atlas_exporter.apps.resolver import AppResolver
    from atlas_exporter.collectors.process.source_darwin import DarwinProcessSource

    exe = _bundle(tmp_path / "Users" / "alice" / "Applications")
    table = FakeTable([FakeProc(pid=4321, name="ViewerPro", exe=str(exe))])
    bundles = BundleNamer()
    source = DarwinProcessSource(table, FakeLibProc(table), bundles=bundles, euid=lambda: 501,
                                 user_name=lambda uid: "alice")
    resolver = AppResolver(source, Namer(()), 500)
    (sample,) = source.scan().samples
    live_app = resolver.app_for(sample)
    assert live_app is not None and "Viewer" in live_app and live_app != "ViewerPro"
    reports = tmp_path / "reports"
    reports.mkdir()
    shutil.copy(FIXTURES / "ips_redacted_display_name.ips", reports / "ViewerPro-2025-06-02-140310.ips")
    watcher = cd.DarwinCrashSource(resolver.app_for_identity, folders=[reports], state_file=None,
                                   poll_interval_seconds=3600, all_users=False, bundles=bundles)
    watcher.start()
    try:
        assert watcher.book.crashes() == {(live_app, "SIGABRT"): 1}
    finally:
        watcher.stop()


def test_a_naming_failure_still_names_through_the_naming_callable(tmp_path):
    """When naming the full identity fails, the report is named from its process name, still by the resolver."""
    seen = []

    def naming(ident: ProcIdentity) -> str:
        seen.append(ident)
        if ident.exe:
            raise RuntimeError("a broken rule")
        return "resolved-" + ident.comm

    reports = tmp_path / "r"
    reports.mkdir()
    shutil.copy(FIXTURES / "ips_macos12_segv.ips", reports / "CrashingTest-1.ips")
    source = cd.DarwinCrashSource(naming, folders=[reports], state_file=None, all_users=False, bundles=BundleNamer())
    source.start()
    try:
        assert source.book.crashes() == {("resolved-CrashingTest", "SIGSEGV"): 1}
    finally:
        source.stop()
