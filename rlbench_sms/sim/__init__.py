"""The MuJoCo twin of the SO-101 cell: world (physics, cameras, wrist F/T, simulated clock),
sim devices behind the hardware contracts, tasks and the scripted expert.

Importing this package chooses MuJoCo's headless EGL rendering (``MUJOCO_GL=egl``) unless the
user set ``MUJOCO_GL``, before anything imports ``mujoco`` (which reads it once, at import).
"""

from rlbench_sms.sim.backend import choose_gl

choose_gl()
