"""Importing MuJoCo for headless rendering, with one readable line when the GL stack is missing.

MuJoCo picks its OpenGL platform from ``MUJOCO_GL`` when it is imported, so the variable must be
set before the first ``import mujoco`` anywhere in the process: :func:`load_mujoco` sets it to
``egl`` (headless, Mesa's llvmpipe on a machine without a GPU) unless the user chose another.
With ``MUJOCO_GL=egl`` and no system libEGL, ``import mujoco`` itself fails with an
``AttributeError`` deep inside PyOpenGL; without Mesa's drivers, creating a GL context fails
later. Both become a :class:`~rlbench_sms.hardware.contracts.HardwareError` naming the Debian
packages to install (``make install`` brings them: ``scripts/system_deps.sh``).
"""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType

from rlbench_sms.hardware.contracts import HardwareError

DEVICE = "MuJoCo twin"
# Debian/Ubuntu packages with the libraries headless EGL rendering loads (tests/optional_deps.py
# names the same ones).
RENDERING_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0"
DEFAULT_GL = "egl"


def choose_gl() -> None:
    """Headless EGL unless the user chose (Linux; a no-op once mujoco is imported)."""
    if "mujoco" not in sys.modules and sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", DEFAULT_GL)


def rendering_error(error: BaseException) -> HardwareError:
    """The one-line error for a GL stack that cannot load or make a context."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    cause = f"{type(error).__name__}: {first}"
    gl = os.environ.get("MUJOCO_GL")
    if not gl:
        return HardwareError(DEVICE, f"MuJoCo cannot render: mujoco was imported with MUJOCO_GL unset "
                                     f"(it then needs a display; {cause}); set MUJOCO_GL=egl before "
                                     f"anything imports mujoco")
    return HardwareError(DEVICE, f"MuJoCo cannot render with MUJOCO_GL={gl} ({cause}); install "
                                 f"{RENDERING_PACKAGES} (`make install` does)")


def load_mujoco() -> ModuleType:
    """``mujoco``, imported for offscreen rendering (``MUJOCO_GL=egl`` unless set on Linux)."""
    choose_gl()
    # PyOpenGL logs at INFO that its optional C accelerator is absent: noise under Hydra's logging.
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)
    try:
        import mujoco
    except ModuleNotFoundError as error:
        if error.name != "mujoco":
            raise
        raise HardwareError(DEVICE, "mujoco is not installed: pip install -e '.[sim]'") from None
    except (ImportError, AttributeError, OSError) as error:
        raise rendering_error(error) from None
    return mujoco
