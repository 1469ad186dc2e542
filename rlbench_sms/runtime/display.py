"""Live view of a recording in rerun: cameras, depth as a depth image, joints and force as series."""

from __future__ import annotations

import numpy as np

from rlbench_sms.features import ACTION, DEPTH_SUFFIX, FORCE, IMAGES_PREFIX, STATE

SERIES = (STATE, ACTION, FORCE)


class RerunDisplay:
    """Log each recorded frame to rerun (a viewer is spawned unless ``save_path`` is given)."""

    def __init__(self, app_id: str, save_path: str | None = None):
        import rerun as rr

        self.rr = rr
        rr.init("rlbench_sms-" + app_id.replace("/", "-"), spawn=save_path is None)
        if save_path is not None:
            rr.save(save_path)
        self._tick = 0

    def __call__(self, frame: dict) -> None:
        rr = self.rr
        rr.set_time("tick", sequence=self._tick)
        self._tick += 1
        for key, value in frame.items():
            if key.startswith(IMAGES_PREFIX):
                name = key[len(IMAGES_PREFIX):]
                if key.endswith(DEPTH_SUFFIX):
                    rr.log(f"cameras/{name}", rr.DepthImage(value, meter=1000.0))   # stored in mm
                else:
                    rr.log(f"cameras/{name}", rr.Image(value))
            elif key in SERIES:
                values = np.asarray(value, dtype=np.float64).reshape(-1)
                rr.log(key.replace(".", "/"), rr.Scalars(values))
