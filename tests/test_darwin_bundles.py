"""macOS .app bundle naming on bundle trees built in tmp dirs with real Info.plist files."""

from __future__ import annotations

import os
import plistlib
import unicodedata
from pathlib import Path

import pytest

from atlas_exporter.collectors.process.bundles_darwin import BundleNamer, clean_name, outermost_bundle

CHROME_HELPER = ("/Applications/Google Chrome.app/Contents/Frameworks/Google Chrome Framework.framework/Versions/1/"
                 "Helpers/Google Chrome Helper (Renderer).app/Contents/MacOS/Google Chrome Helper (Renderer)")


@pytest.mark.parametrize(("exe", "bundle"), [
    (CHROME_HELPER, "/Applications/Google Chrome.app"),
    ("/Applications/Google Chrome.app/Contents/MacOS/Google Chrome", "/Applications/Google Chrome.app"),
    ("/Applications/Safari.app/Contents/XPCServices/com.apple.Safari.SandboxBroker.xpc/Contents/MacOS/"
     "com.apple.Safari.SandboxBroker", "/Applications/Safari.app"),
    ("/Applications/Notes.app/Contents/PlugIns/Share.appex/Contents/MacOS/Share", "/Applications/Notes.app"),
    ("/Library/Extensions/Widget.appex/Contents/MacOS/Widget", "/Library/Extensions/Widget.appex"),
    ("/Users/ann/Apps/OLD.APP/Contents/MacOS/old", "/Users/ann/Apps/OLD.APP"),
    ("/usr/sbin/cfprefsd", None),
    ("/opt/tools/launcher.app", None),  # an executable file named *.app is not a bundle folder
    ("/opt/.app/Contents/MacOS/x", None),
    ("Google Chrome.app/Contents/MacOS/Google Chrome", None),  # not an absolute path
    ("", None),
])
def test_darwin_outermost_bundle(exe: str, bundle: str | None) -> None:
    assert outermost_bundle(exe) == bundle


def make_bundle(root: Path, relative: str, info: dict | None = None, *, fmt: plistlib.PlistFormat = plistlib.FMT_XML,
                raw: bytes | None = None, shallow: bool = False) -> Path:
    """Create `root/relative` as a bundle folder with an executable and, optionally, an Info.plist."""
    bundle = root / relative
    macos = bundle / "Contents" / "MacOS"
    macos.mkdir(parents=True, exist_ok=True)
    exe = macos / bundle.stem
    exe.write_bytes(b"\xcf\xfa\xed\xfe")
    plist = bundle / "Info.plist" if shallow else bundle / "Contents" / "Info.plist"
    if raw is not None:
        plist.write_bytes(raw)
    elif info is not None:
        plist.write_bytes(plistlib.dumps(info, fmt=fmt))
    return exe


def test_darwin_chrome_helper_rolls_into_its_app(tmp_path: Path) -> None:
    make_bundle(tmp_path, "Google Chrome.app", {"CFBundleName": "Chrome", "CFBundleDisplayName": "Google Chrome"})
    helper = make_bundle(
        tmp_path,
        "Google Chrome.app/Contents/Frameworks/Google Chrome Framework.framework/Versions/1/Helpers/"
        "Google Chrome Helper (Renderer).app",
        {"CFBundleName": "Google Chrome Helper (Renderer)"},
    )
    namer = BundleNamer()
    assert namer.name_for_exe(str(helper)) == "Google Chrome"
    assert namer.name_for_exe(str(tmp_path / "Google Chrome.app/Contents/MacOS/Google Chrome")) == "Google Chrome"


@pytest.mark.parametrize("fmt", [plistlib.FMT_XML, plistlib.FMT_BINARY], ids=["xml", "binary"])
def test_darwin_bundle_name_prefers_display_name(tmp_path: Path, fmt: plistlib.PlistFormat) -> None:
    exe = make_bundle(tmp_path, "Code.app", {"CFBundleDisplayName": "Visual Studio Code", "CFBundleName": "Code",
                                             "CFBundleIdentifier": "com.microsoft.VSCode"}, fmt=fmt)
    assert BundleNamer().name_for_exe(str(exe)) == "Visual Studio Code"


def test_darwin_bundle_name_falls_back_to_bundle_name(tmp_path: Path) -> None:
    exe = make_bundle(tmp_path, "Slack.app", {"CFBundleDisplayName": "  ", "CFBundleName": "Slack Desktop"},
                      fmt=plistlib.FMT_BINARY)
    assert BundleNamer().name_for_exe(str(exe)) == "Slack Desktop"


@pytest.mark.parametrize(("info", "raw"), [
    (None, None),  # no Info.plist at all
    ({"CFBundleIdentifier": "org.example.tool"}, None),  # no name keys
    ({"CFBundleName": "$(PRODUCT_NAME)"}, None),  # an unexpanded build variable
    ({"CFBundleDisplayName": 42, "CFBundleName": ["x"]}, None),  # names that are not strings
    (None, b"<?xml version='1.0'?><plist><dict><key>CFBundleName</key>"),  # truncated XML
    (None, b"bplist00\x00\x01garbage"),  # broken binary plist
    (None, plistlib.dumps(["CFBundleName", "Wrong"])),  # root is an array
    (None, b""),
])
def test_darwin_bundle_name_uses_the_folder_when_info_plist_is_unusable(tmp_path: Path, info: dict | None,
                                                                         raw: bytes | None) -> None:
    exe = make_bundle(tmp_path, "Disk Utility.app", info, raw=raw)
    namer = BundleNamer()
    assert namer.name_for_exe(str(exe)) == "Disk Utility"


def test_darwin_broken_info_plist_is_counted(tmp_path: Path) -> None:
    broken = make_bundle(tmp_path, "Broken.app", raw=b"<plist><dict><key>")
    missing = make_bundle(tmp_path, "Missing.app")
    namer = BundleNamer()
    assert namer.name_for_exe(str(broken)) == "Broken"
    assert namer.name_for_exe(str(missing)) == "Missing"
    assert namer.errors == 1  # a missing Info.plist is normal, a broken one is counted


def test_darwin_shallow_bundle_reads_top_level_info_plist(tmp_path: Path) -> None:
    exe = make_bundle(tmp_path, "Share.appex", {"CFBundleDisplayName": "Share to Notes"}, shallow=True)
    assert BundleNamer().name_for_exe(str(exe)) == "Share to Notes"


def test_darwin_appex_inside_app_is_named_by_the_app(tmp_path: Path) -> None:
    make_bundle(tmp_path, "Notes.app", {"CFBundleName": "Notes"})
    ext = make_bundle(tmp_path, "Notes.app/Contents/PlugIns/Share.appex", {"CFBundleDisplayName": "Share"})
    alone = make_bundle(tmp_path, "Widgets/Weather.appex")
    namer = BundleNamer()
    assert namer.name_for_exe(str(ext)) == "Notes"
    assert namer.name_for_exe(str(alone)) == "Weather"


def test_darwin_non_utf8_folder_name_becomes_a_valid_label(tmp_path: Path) -> None:
    folder = os.fsdecode(b"Caf\xe9 Bar.app")  # Latin-1 bytes, not UTF-8
    exe = make_bundle(tmp_path, folder)
    name = BundleNamer().name_for_exe(str(exe))
    assert name == "Caf\ufffd Bar"
    name.encode("utf-8")  # no surrogates left: prometheus_client can encode it


def test_darwin_decomposed_names_are_normalised(tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "Café.app")
    exe = make_bundle(tmp_path, decomposed, {"CFBundleName": unicodedata.normalize("NFD", "Résumé  Builder")})
    assert BundleNamer().name_for_exe(str(exe)) == "Résumé Builder"
    assert clean_name(unicodedata.normalize("NFD", "Café")) == "Café"


def test_darwin_bundle_names_are_cached_and_bounded() -> None:
    reads: list[str] = []

    def read(path: str) -> bytes:
        reads.append(path)
        return plistlib.dumps({"CFBundleName": path.split("/")[2].removesuffix(".app").upper()})

    namer = BundleNamer(read=read, cache_size=2)
    for _ in range(3):
        assert namer.name_for_exe("/Applications/a.app/Contents/MacOS/a") == "A"
    assert len(reads) == 1
    namer.name_for_exe("/Applications/b.app/Contents/MacOS/b")
    namer.name_for_exe("/Applications/c.app/Contents/MacOS/c")  # evicts a
    namer.name_for_exe("/Applications/a.app/Contents/MacOS/a")
    assert len(reads) == 4


def test_darwin_oversized_or_unreadable_info_plist_falls_back(tmp_path: Path) -> None:
    big = make_bundle(tmp_path, "Big.app", raw=b"<?xml version='1.0'?>" + b" " * (1024 * 1024 + 10))
    namer = BundleNamer()
    assert namer.name_for_exe(str(big)) == "Big"

    def denied(path: str) -> bytes:
        raise PermissionError(13, "Permission denied", path)

    assert BundleNamer(read=denied).name_for_exe("/Applications/Locked.app/Contents/MacOS/x") == "Locked"


def test_darwin_no_bundle_gives_none() -> None:
    namer = BundleNamer(read=lambda path: pytest.fail("nothing to read"))
    assert namer.name_for_exe("/usr/libexec/syspolicyd") is None
    assert namer.name_for_exe(None) is None


def test_darwin_bundle_ids_remember_the_name_found(tmp_path: Path) -> None:
    exe = make_bundle(tmp_path, "ViewerPro.app", {"CFBundleDisplayName": "Viewer Pro Studio",
                                                  "CFBundleIdentifier": "org.example.ViewerPro"})
    no_name = make_bundle(tmp_path, "Bare.app", {"CFBundleIdentifier": "org.example.Bare"})
    namer = BundleNamer()
    assert namer.name_for_bundle_id("org.example.ViewerPro") is None  # nothing read yet
    assert namer.name_for_exe(str(exe)) == "Viewer Pro Studio"
    assert namer.name_for_exe(str(no_name)) == "Bare"
    assert namer.name_for_bundle_id("org.example.ViewerPro") == "Viewer Pro Studio"
    assert namer.name_for_bundle_id("org.example.Bare") == "Bare"


def test_darwin_fifo_info_plist_does_not_block(tmp_path: Path) -> None:
    """Anyone can build a bundle; a FIFO named Info.plist must not stall the scan that names it."""
    exe = make_bundle(tmp_path, "Trap.app", None)
    os.mkfifo(exe.parent.parent / "Info.plist")
    namer = BundleNamer()
    assert namer.name_for_exe(str(exe)) == "Trap"
    assert namer.errors == 1
