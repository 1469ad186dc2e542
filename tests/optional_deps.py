"""Optional native dependencies: skip a test, with the loader's own reason, when one cannot load.

``pytest.importorskip`` skips only a *missing* module. A wheel that is installed but whose system
library is absent (pyrealsense2 without libusb-1.0, MuJoCo's EGL rendering without Mesa) raises
another ImportError or an OSError, which pytest reports as an error. ``make install`` brings these
libraries where it can (``scripts/system_deps.sh``); where it cannot, these helpers turn the
failure into a skip that names the library and what to install.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import pytest

# The system package (Debian/Ubuntu name) an optional module's native code needs beyond what its
# wheel bundles (opencv-python-headless and rerun-sdk need only the C/C++ runtime).
SYSTEM_PACKAGE = {"pyrealsense2": "libusb-1.0-0"}
MUJOCO_RENDERING_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0"


def _reason(what: str, error: BaseException, fix: str | None) -> str:
    return f"{what} cannot load: {error}" + (f" ({fix})" if fix else "")


def import_or_skip_native(module: str) -> ModuleType:
    """``module``, imported; or skip the calling test (or test module) saying why it cannot load.

    A missing module skips with "pip install"; an installed one whose shared library is missing
    skips with the loader's message and the system package to install.
    """
    __tracebackhide__ = True             # report the skip at the test that asked, not here
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module.split(".")[0]:
            raise                        # a dependency of ours is missing: a real failure
        pytest.skip(_reason(module, error, "pip install -e '.[dev]'"), allow_module_level=True)
    except (ImportError, OSError) as error:
        package = SYSTEM_PACKAGE.get(module.split(".")[0])
        pytest.skip(_reason(module, error, f"apt-get install {package}" if package else None),
                    allow_module_level=True)


@functools.lru_cache(maxsize=1)
def mujoco_rendering_error() -> str | None:
    """Why MuJoCo cannot render offscreen here (``MUJOCO_GL``, EGL by default in the tests), or
    None when a tiny scene renders. Probed once per test process."""
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        renderer = mujoco.Renderer(model, 8, 8)
        try:
            renderer.update_scene(data)
            renderer.render()
        finally:
            renderer.close()
    except Exception as error:          # the GL stack reports failure in many exception types
        return f"{type(error).__name__}: {error}"
    return None


def require_mujoco_rendering() -> None:
    """Skip the calling test unless MuJoCo can render offscreen (headless EGL needs Mesa)."""
    __tracebackhide__ = True
    error = mujoco_rendering_error()
    if error is not None:
        pytest.skip(_reason("MuJoCo rendering", error, f"apt-get install {MUJOCO_RENDERING_PACKAGES}"),
                    allow_module_level=True)
