"""macOS application bundles: the outermost `.app` of an executable path and its display name.

Helpers and XPC services live inside their app's bundle, so the outermost bundle on
the path names the application a person sees:

    /Applications/Google Chrome.app/Contents/Frameworks/Google Chrome Framework.framework/
      Versions/1/Helpers/Google Chrome Helper (Renderer).app/Contents/MacOS/Google Chrome Helper (Renderer)
    -> bundle /Applications/Google Chrome.app -> "Google Chrome"

The name is `CFBundleDisplayName`, else `CFBundleName`, from the bundle's Info.plist (XML
or binary, read with plistlib), else the folder name without its suffix. Names are NFC
normalised and always valid UTF-8, so they can be label values. Results are cached per
bundle path; a broken Info.plist falls back to the folder name and is counted.

Every name found is also remembered by the bundle's `CFBundleIdentifier`, so a crash
report, whose paths macOS redacts (`/Users/USER/...`), can be given the display name the
live naming found (`name_for_bundle_id`). `shared_bundle_namer()` is the one instance the
process source and the crash report watcher share. Info.plist files are opened without
blocking and read only when they are regular files (a FIFO named Info.plist in a bundle
a user made cannot stall a scan).
"""

from __future__ import annotations

import logging
import os
import plistlib
import stat
import threading
import unicodedata
import xml.parsers.expat
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)

APP_SUFFIX = ".app"
APPEX_SUFFIX = ".appex"
MAX_PLIST_BYTES = 1024 * 1024
NAME_KEYS = ("CFBundleDisplayName", "CFBundleName")


def outermost_bundle(exe: str) -> str | None:
    """The path of the outermost `.app` folder on `exe`, else the outermost `.appex`, else None.

    Only folders count: the last path component is the executable itself.
    """
    if not exe or not exe.startswith("/"):
        return None
    parts = exe.split("/")[:-1]
    appex: int | None = None
    for i, part in enumerate(parts):
        lower = part.lower()
        if lower.endswith(APP_SUFFIX) and len(part) > len(APP_SUFFIX):
            return "/".join(parts[: i + 1])
        if appex is None and lower.endswith(APPEX_SUFFIX) and len(part) > len(APPEX_SUFFIX):
            appex = i
    return "/".join(parts[: appex + 1]) if appex is not None else None


def clean_name(text: str) -> str:
    """A label-safe name: undecodable bytes replaced, NFC normalised, whitespace collapsed."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def folder_name(bundle: str) -> str:
    """The bundle folder name without `.app` / `.appex`."""
    base = bundle.rstrip("/").rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in (APPEX_SUFFIX, APP_SUFFIX):
        if lower.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return clean_name(base)


class PlistError(ValueError):
    """An Info.plist that cannot be parsed or is not a dictionary."""


def parse_info_plist(data: bytes) -> dict[str, object]:
    """Parse Info.plist bytes (XML or binary); raises `PlistError` when it is not a dict."""
    try:
        value = plistlib.loads(data)
    except (plistlib.InvalidFileException, xml.parsers.expat.ExpatError, ValueError, TypeError,
            KeyError, IndexError, OverflowError, UnicodeError) as err:
        raise PlistError(f"not a property list: {err}") from None
    if not isinstance(value, dict):
        raise PlistError(f"root is {type(value).__name__}, not a dictionary")
    return value


def name_from_info(info: dict[str, object]) -> str | None:
    """CFBundleDisplayName, else CFBundleName: the first non-empty string without unexpanded `$(...)`."""
    for key in NAME_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            name = clean_name(value)
            if name and "$(" not in name:
                return name
    return None


def info_plist_paths(bundle: str) -> tuple[str, str]:
    """Where a bundle keeps its Info.plist: `Contents/Info.plist` (macOS), else at the top (shallow)."""
    return os.path.join(bundle, "Contents", "Info.plist"), os.path.join(bundle, "Info.plist")


def _read_limited(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise PlistError("not a regular file")
        data = handle.read(MAX_PLIST_BYTES + 1)
    if len(data) > MAX_PLIST_BYTES:
        raise PlistError(f"larger than {MAX_PLIST_BYTES} bytes")
    return data


class BundleNamer:
    """Names executables by their outermost bundle; thread-safe, with a bounded cache per bundle.

    `read` is injectable for tests (default: read the file, at most 1 MiB). `errors` counts
    bundles whose Info.plist exists but could not be used.
    """

    def __init__(self, read: Callable[[str], bytes] = _read_limited, cache_size: int = 2048) -> None:
        self._read = read
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self._ids: OrderedDict[str, str] = OrderedDict()  # CFBundleIdentifier -> name
        self._lock = threading.Lock()
        self.errors = 0

    def name_for_bundle_id(self, bundle_id: str) -> str | None:
        """The name found for the bundle with this `CFBundleIdentifier`, if one was read since start."""
        with self._lock:
            name = self._ids.get(bundle_id)
            if name is not None:
                self._ids.move_to_end(bundle_id)
            return name

    def _remember_id(self, info: dict[str, object], name: str) -> None:
        bundle_id = info.get("CFBundleIdentifier")
        if not isinstance(bundle_id, str) or not bundle_id or len(bundle_id) > 255:
            return
        with self._lock:
            self._ids[bundle_id] = name
            self._ids.move_to_end(bundle_id)
            while len(self._ids) > self._cache_size:
                self._ids.popitem(last=False)

    def bundle_of(self, exe: str | None) -> str | None:
        return outermost_bundle(exe) if exe else None

    def name_for_exe(self, exe: str | None) -> str | None:
        """Display name of the outermost bundle around `exe`, or None when it is not in a bundle."""
        bundle = self.bundle_of(exe)
        return self.name_for_bundle(bundle) if bundle else None

    def name_for_bundle(self, bundle: str) -> str:
        with self._lock:
            name = self._cache.get(bundle)
            if name is not None:
                self._cache.move_to_end(bundle)
                return name
        name = self._lookup(bundle)
        with self._lock:
            self._cache[bundle] = name
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return name

    def _lookup(self, bundle: str) -> str:
        for path in info_plist_paths(bundle):
            try:
                data = self._read(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, PlistError) as err:
                self._failed(path, err)
                break
            try:
                info = parse_info_plist(data)
            except PlistError as err:
                self._failed(path, err)
                break
            name = name_from_info(info) or folder_name(bundle)
            self._remember_id(info, name)
            return name
        return folder_name(bundle)

    def _failed(self, path: str, err: Exception) -> None:
        with self._lock:
            self.errors += 1
        log.debug("cannot use %s: %s", path, err)


_SHARED: BundleNamer | None = None
_SHARED_LOCK = threading.Lock()


def shared_bundle_namer() -> BundleNamer:
    """The process-wide `BundleNamer`: the process source fills it, the crash watcher reads its ids."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = BundleNamer()
        return _SHARED
