"""The install contract: no torchvision, torch within the declared range, and the dataset side of
the package usable on a robot PC without torch."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def test_torchvision_is_not_installed():
    assert importlib.util.find_spec("torchvision") is None


def test_torch_is_the_pinned_major():
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    assert (2, 4) <= (major, minor) < (2, 15)


def test_dataset_io_does_not_import_torch():
    code = ("import sys; import rlbench_sms.data.writer, rlbench_sms.data.reader, "
            "rlbench_sms.data.validate, rlbench_sms.data.sample; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- scripts/system_deps.sh (run by `make install`) ----------------------------------------------
SYSTEM_DEPS = Path(__file__).parent.parent / "scripts" / "system_deps.sh"
SONAMES = ["libusb-1.0.so.0", "libEGL.so.1", "libEGL_mesa.so.0", "libOpenGL.so.0"]


def run_system_deps(tmp_path: Path, cache: list[str], **env: str) -> tuple[str, list[str]]:
    """The script with a stand-in ``ldconfig`` (whose cache lists ``cache``) and ``apt-get`` (which
    records its arguments) first on PATH: (its output, the apt-get calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "".join(f"\t{name} (libc6,x86-64) => /lib/{name}\\n" for name in cache)
    (bin_dir / "ldconfig").write_text(f"#!/bin/sh\nprintf '{len(cache)} libs found in cache\\n{lines}'\n")
    calls = tmp_path / "apt-calls"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    out = subprocess.run(["bash", str(SYSTEM_DEPS)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env})
    assert out.returncode == 0, out.stderr           # never fails the install
    return out.stdout + out.stderr, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="system libraries are a Linux step")
def test_system_deps_names_what_is_missing_in_one_line_without_apt(tmp_path):
    output, apt_calls = run_system_deps(tmp_path, cache=[], NO_APT="1")
    assert apt_calls == []
    assert len(output.strip().splitlines()) == 1
    assert "apt-get install libusb-1.0-0 libegl1 libegl-mesa0" in output and "libopengl0" in output
    assert "RealSense" in output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="system libraries are a Linux step")
def test_system_deps_does_no_apt_work_for_libraries_already_there(tmp_path):
    output, apt_calls = run_system_deps(tmp_path, cache=SONAMES)
    # Only Mesa's software driver (a file, not in the loader's cache) can still be missing here.
    assert all("libusb" not in call and "libegl1" not in call for call in apt_calls), apt_calls
    assert output.strip() == "" or "libgl1-mesa-dri" in output
