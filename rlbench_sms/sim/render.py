"""Offscreen rendering of one camera: RGB and metric depth from a single draw.

``mujoco.Renderer`` draws the scene again for depth; here colour and depth are read back from
the same draw (``mjr_readPixels`` with both buffers), which halves the cost of an RGB-D camera,
and depth is exactly aligned to the colour by construction (same camera, same pixels).
Shadows, reflections, the skybox and multisampling are off (stack_notes §5: the quality settings
that cost the most on a CPU renderer; multisampling is ``offsamples="0"`` in cell.xml).

Depth: MuJoCo reads a reversed-Z depth buffer (``mjDEPTH_ZEROFAR``: 1 at the near plane, 0 at
the far plane). For near ``n`` and far ``f`` (metres) the planar distance along the optical axis
of a buffer value ``b`` is ``f * n / (n + b * (f - n))``; ``b == 0`` means nothing was hit
before the far plane. Images come out of OpenGL bottom row first and are flipped here.
"""

from __future__ import annotations

import numpy as np

from rlbench_sms.sim.backend import load_mujoco, rendering_error

# Rendering features the twin switches off for speed (flags of mjvScene).
_OFF_FLAGS = ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX", "mjRND_FOG", "mjRND_HAZE")


class CameraRenderer:
    """Renders fixed cameras of ``model`` at ``width`` x ``height`` (its own GL context)."""

    def __init__(self, model, width: int, height: int):
        mujoco = self._mujoco = load_mujoco()
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(f"render size {width}x{height} exceeds the model's offscreen buffer "
                             f"{model.vis.global_.offwidth}x{model.vis.global_.offheight}")
        self.model, self.width, self.height = model, int(width), int(height)
        self._context = None
        self._mjr = None
        try:
            from mujoco.gl_context import GLContext

            self._context = GLContext(self.width, self.height)
            self._context.make_current()
            self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50.value)
        except Exception as error:          # the GL stack reports failure in many exception types
            self.close()
            raise rendering_error(error) from None
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._mjr)
        self._mjr.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=max(1000, 2 * model.ngeom))
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._depth = np.empty((self.height, self.width), np.float32)

    def render(self, data, camera_id: int, depth: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB (H, W, 3) uint8 and, with ``depth``, planar depth (H, W) float64 metres (``inf``
        where nothing was hit before the far plane), both top row first."""
        mujoco = self._mujoco
        if self._mjr is None:
            raise RuntimeError("renderer is closed")
        self._context.make_current()
        self._camera.fixedcamid = int(camera_id)
        mujoco.mjv_updateScene(self.model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL.value, self._scene)
        for flag in _OFF_FLAGS:
            self._scene.flags[getattr(mujoco.mjtRndFlag, flag)] = 0
        mujoco.mjr_render(self._rect, self._scene, self._mjr)
        mujoco.mjr_readPixels(self._rgb, self._depth if depth else None, self._rect, self._mjr)
        rgb = np.flipud(self._rgb).copy()
        if not depth:
            return rgb, None
        near, far = clip_planes(self.model)
        buffer = np.flipud(self._depth).astype(np.float64)
        with np.errstate(divide="ignore"):
            metres = np.where(buffer > 0, far * near / (near + buffer * (far - near)), np.inf)
        return rgb, metres

    def close(self) -> None:
        if self._mjr is not None and self._context is not None:
            self._context.make_current()
            self._mjr.free()
        self._mjr = None
        if self._context is not None:
            self._context.free()
        self._context = None


def clip_planes(model) -> tuple[float, float]:
    """The near and far clipping planes in metres (``visual/map`` scales them by the extent)."""
    extent = float(model.stat.extent)
    return float(model.vis.map.znear) * extent, float(model.vis.map.zfar) * extent
