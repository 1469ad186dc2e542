"""``adapt_to_pi_aloha``: map Aloha's joint/gripper space to the one the pi runtime used.

Applied (as in LeRobot) to the *normalised* state/actions inside the policy. Joints 1, 2, 8, 9 are
negated; grippers 6 and 13 go through the Interbotix linear <-> angular conversion:

- Aloha's linear gripper position (normalised between 0.01844 m and 0.05800 m) to an angle by
  inverting the horn/arm linkage (horn radius 0.022 m, arm length 0.036 m), then normalised to
  [0, 1] between 0.4 and 1.5 rad (values measured on a Trossen arm);
- and the angular gripper value back to Aloha's joint range [-0.6213, 1.4910].
"""

from __future__ import annotations

import torch
from torch import Tensor

FLIPPED_JOINTS = (1, 2, 8, 9)
GRIPPERS = (6, 13)
LINEAR_OPEN, LINEAR_CLOSED = 0.01844, 0.05800
ANGLE_LO, ANGLE_HI = 0.4, 1.5
JOINT_LO, JOINT_HI = -0.6213, 1.4910
ARM_LENGTH, HORN_RADIUS = 0.036, 0.022


def _to_unit(x: Tensor, lo: float, hi: float) -> Tensor:
    return (x - lo) / (hi - lo)


def _from_unit(x: Tensor, lo: float, hi: float) -> Tensor:
    return x * (hi - lo) + lo


def gripper_to_angular(x: Tensor) -> Tensor:
    linear = _from_unit(x, LINEAR_OPEN, LINEAR_CLOSED)
    cos_law = (HORN_RADIUS ** 2 + linear ** 2 - ARM_LENGTH ** 2) / (2 * HORN_RADIUS * linear)
    angle = torch.arcsin(torch.clamp(cos_law, -1.0, 1.0))
    return _to_unit(angle, ANGLE_LO, ANGLE_HI)


def gripper_from_angular(x: Tensor) -> Tensor:
    return _to_unit(_from_unit(x, ANGLE_LO, ANGLE_HI), JOINT_LO, JOINT_HI)


def gripper_from_angular_inv(x: Tensor) -> Tensor:
    return _to_unit(_from_unit(x, JOINT_LO, JOINT_HI), ANGLE_LO, ANGLE_HI)


def _map(x: Tensor, gripper_fn) -> Tensor:
    x = x.clone()
    for j in FLIPPED_JOINTS:
        x[..., j] = -x[..., j]
    for g in GRIPPERS:
        x[..., g] = gripper_fn(x[..., g])
    return x


def decode_state(state: Tensor) -> Tensor:
    return _map(state, gripper_to_angular)


def encode_actions(actions: Tensor) -> Tensor:
    return _map(actions, gripper_from_angular)


def encode_actions_inv(actions: Tensor) -> Tensor:
    return _map(actions, gripper_from_angular_inv)
