"""A native library that cannot load makes its tests SKIP with the loader's reason, never error.

The camera tests run in a child pytest whose ``pyrealsense2`` raises, at import, exactly what the
real wheel raises on a machine without libusb-1.0 (a fake package first on PYTHONPATH: no root
needed to hide the library). The child's JUnit report says how each test ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from optional_deps import import_or_skip_native, require_mujoco_rendering

REPO = Path(__file__).parent.parent
LOADER_ERROR = "libusb-1.0.so.0: cannot open shared object file: No such file or directory"
CAMERA_TESTS = ["tests/test_cameras.py",
                "tests/test_record_so100.py::test_full_rig_so100_realsense_serial_force"]
# Tests that exercise librealsense itself; the others (schemas, the mm conversion, OpenCV) need
# no pyrealsense2 and must still pass.
NEEDS_LIBREALSENSE = ("test_realsense_depth_aligned", "test_realsense_intrinsics",
                      "test_realsense_colour_and_depth", "test_realsense_stalled",
                      "test_realsense_streaming", "test_realsense_unknown_serial",
                      "test_full_rig_so100_realsense")


def fake_unloadable_package(root: Path, name: str, message: str) -> Path:
    """A package ``name`` under ``root`` whose import fails as a missing shared library does."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    return root


def run_child_pytest(tests: list[str], tmp_path: Path, pythonpath: Path) -> dict[str, tuple[str, str]]:
    """Run ``tests`` in a child pytest with ``pythonpath`` first; {test name: (outcome, message)}."""
    report = tmp_path / "report.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(pythonpath)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--junitxml={report}", *tests],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        ended = [child for child in case if child.tag in ("skipped", "error", "failure")]
        outcomes[case.get("name")] = ((ended[0].tag, ended[0].get("message") or "") if ended
                                      else ("passed", ""))
    return outcomes


def test_realsense_tests_skip_with_the_loaders_reason_when_libusb_is_missing(tmp_path):
    fake = fake_unloadable_package(tmp_path / "fake", "pyrealsense2", LOADER_ERROR)
    outcomes = run_child_pytest(CAMERA_TESTS, tmp_path, fake)

    broken = {name: o for name, o in outcomes.items() if o[0] in ("error", "failure")}
    assert not broken, broken
    skipped = {name: message for name, (outcome, message) in outcomes.items() if outcome == "skipped"}
    expected = {name for name in outcomes if name.startswith(NEEDS_LIBREALSENSE)}
    assert len(expected) >= 8 and set(skipped) == expected, outcomes
    for message in skipped.values():
        assert f"pyrealsense2 cannot load: {LOADER_ERROR}" in message
        assert "apt-get install libusb-1.0-0" in message
    assert outcomes["test_realsense_features_without_hardware"][0] == "passed"


def test_import_or_skip_native_imports_what_loads_and_skips_what_is_missing(tmp_path, monkeypatch):
    assert import_or_skip_native("json").dumps([1]) == "[1]"
    with pytest.raises(pytest.skip.Exception, match="no_such_module_xyz cannot load: No module named"):
        import_or_skip_native("no_such_module_xyz")
    fake = fake_unloadable_package(tmp_path, "fake_native_xyz", "libfoo.so.1: cannot open shared object file")
    monkeypatch.syspath_prepend(str(fake))
    with pytest.raises(pytest.skip.Exception, match="fake_native_xyz cannot load: libfoo.so.1"):
        import_or_skip_native("fake_native_xyz")


def test_mujoco_rendering_probe_skips_with_the_gl_error(monkeypatch):
    import optional_deps

    monkeypatch.setattr(optional_deps, "mujoco_rendering_error",
                        lambda: "RuntimeError: Cannot initialize a EGL device display")
    with pytest.raises(pytest.skip.Exception, match=r"EGL device display \(apt-get install libegl1 "):
        require_mujoco_rendering()
