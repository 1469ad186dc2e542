"""What a policy reads and writes, and whether a set of devices can feed it.

A :class:`PolicyContract` is read from a policy directory without torch (the robot PC of a remote
evaluation has none): from ``rlbench_sms.json`` for a policy exported by ``train.py`` (the dataset
features it was trained on, with shapes, names, units and intrinsics), or, for a SmolVLA
``pretrained_model`` directory saved by LeRobot itself, derived from its ``config.json`` features.
It travels in the server's handshake as a plain dict (:meth:`PolicyContract.to_dict`).

:func:`check_devices` compares it with the features the devices give (the recorder's schema)
before anything moves, and names every difference in one line: a missing camera, a depth stream
the policy needs but the camera does not give, a force sensor with another channel count, another
fps. Extra device features are ignored. ``rename`` maps a device camera name to the policy's camera
name, for a camera called differently on this rig.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rlbench_sms.features import (ACTION, FORCE, IMAGES_PREFIX, STATE, FeatureSpec, camera_of, depth_key,
                                  image_key, is_camera_key, is_depth_key)

log = logging.getLogger(__name__)

SIDECAR_FILE = "rlbench_sms.json"      # written by training/export.py
CONFIG_FILE = "config.json"            # LeRobot's policy config
# SmolVLA's own input size when a config does not say (LeRobot's default resize_imgs_with_padding).
DEFAULT_IMAGE_SIZE = (512, 512)


class ContractError(ValueError):
    """A policy directory that has no readable contract, or devices that cannot feed it (one line)."""


@dataclass(frozen=True)
class PolicyContract:
    """The features a policy reads (``inputs``: dataset keys -> specs in dataset layout, images
    (H, W, C)) and writes (``action``), and how it runs: control rate, chunk length, how many of a
    chunk's actions it means to be executed, force history length, input image size."""

    inputs: dict[str, FeatureSpec]
    action: FeatureSpec
    fps: int | None                     # None: a LeRobot checkpoint does not record it
    chunk_size: int
    n_action_steps: int
    force_window: int = 1
    modality: str = ""
    image_size: tuple[int, int] | None = DEFAULT_IMAGE_SIZE   # (width, height) images are padded to
    source: str = "rlbench_sms"         # "rlbench_sms" (an export) or "lerobot" (derived from config.json)
    extra: dict[str, Any] = field(default_factory=dict)       # e.g. the branches, for the record

    # ------------------------------------------------------------------ views
    @property
    def cameras(self) -> list[str]:
        """Cameras whose RGB the policy reads."""
        return [camera_of(k) for k in self.inputs if is_camera_key(k) and not is_depth_key(k)]

    @property
    def depth_cameras(self) -> list[str]:
        """Cameras whose depth the policy reads."""
        return [camera_of(k) for k in self.inputs if is_depth_key(k)]

    @property
    def force_channels(self) -> int | None:
        spec = self.inputs.get(FORCE)
        return int(spec.shape[0]) if spec is not None else None

    # ------------------------------------------------------------------ wire form
    def to_dict(self) -> dict[str, Any]:
        """A JSON / msgpack-able dict (the handshake's contract)."""
        return {"inputs": {k: s.to_info() for k, s in self.inputs.items()}, "action": self.action.to_info(),
                "fps": self.fps, "chunk_size": self.chunk_size, "n_action_steps": self.n_action_steps,
                "force_window": self.force_window, "modality": self.modality,
                "image_size": list(self.image_size) if self.image_size else None, "source": self.source,
                "extra": self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicyContract":
        try:
            inputs = {k: FeatureSpec.from_info(k, v) for k, v in d["inputs"].items()}
            size = d.get("image_size")
            return cls(inputs, FeatureSpec.from_info(ACTION, d["action"]),
                       None if d.get("fps") is None else int(d["fps"]), int(d["chunk_size"]),
                       int(d["n_action_steps"]), int(d.get("force_window", 1)), str(d.get("modality", "")),
                       tuple(int(v) for v in size) if size else None, str(d.get("source", "rlbench_sms")),
                       dict(d.get("extra") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ContractError(f"malformed policy contract: {type(error).__name__}: {error}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ContractError(f"{path}: not valid JSON ({error})") from None


def _image_size(config: Mapping[str, Any]) -> tuple[int, int] | None:
    size = config.get("resize_imgs_with_padding", DEFAULT_IMAGE_SIZE)
    return tuple(int(v) for v in size) if size else None


def load_contract(directory: str | Path) -> PolicyContract:
    """The contract of a policy directory: an export of ``train.py`` or a LeRobot SmolVLA checkpoint.

    Raises :class:`ContractError` (one line) for a directory that is neither.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ContractError(f"{root}: no such policy directory")
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise ContractError(f"{root}: {CONFIG_FILE} is missing; not a policy directory "
                            f"(train.py exports to <run>/policy/best)")
    config = _read_json(config_path)
    sidecar = root / SIDECAR_FILE
    if sidecar.is_file():
        return _from_export(root, _read_json(sidecar), config)
    contract = _from_lerobot_config(root, config)
    log.warning("%s has no %s (not exported by train.py): its contract is derived from %s's features",
                root, SIDECAR_FILE, CONFIG_FILE)
    return contract


def _run_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    chunk = int(config.get("chunk_size", 50))
    return {"chunk_size": chunk, "n_action_steps": int(config.get("n_action_steps", chunk)),
            "image_size": _image_size(config)}


def _from_export(root: Path, info: Mapping[str, Any], config: Mapping[str, Any]) -> PolicyContract:
    try:
        features = {k: FeatureSpec.from_info(k, v) for k, v in info["features"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ContractError(f"{root / SIDECAR_FILE}: no readable 'features' ({type(error).__name__}: {error})") from None
    if ACTION not in features or STATE not in features:
        raise ContractError(f"{root / SIDECAR_FILE}: 'features' lacks {ACTION!r} or {STATE!r}")
    action = features.pop(ACTION)
    return PolicyContract(features, action, None if info.get("fps") is None else int(info["fps"]),
                          force_window=int(info.get("force_window") or 1), modality=str(info.get("modality", "")),
                          source="rlbench_sms", extra={"branches": info.get("branches") or {},
                                                       "tasks": _trained_tasks(info)},
                          **_run_settings(config))


def _trained_tasks(info: Mapping[str, Any]) -> list[str]:
    """The task texts the policy was trained on: from the sidecar, else (an export from before it
    recorded them) from the training dataset when it is still where it was."""
    if info.get("tasks"):
        return [str(t) for t in info["tasks"]]
    root = (info.get("dataset") or {}).get("root")
    if root and Path(root, "meta").is_dir():
        from rlbench_sms.data.metadata import DatasetMeta

        try:
            return [str(t) for t in DatasetMeta.load(root).tasks]
        except Exception:              # a moved or damaged dataset: no default task, not an error
            return []
    return []


def _from_lerobot_config(root: Path, config: Mapping[str, Any]) -> PolicyContract:
    """LeRobot's ``input_features`` are policy-layout shapes ((C, H, W) images) with no names."""
    try:
        raw_inputs = dict(config["input_features"])
        raw_action = dict(config["output_features"])[ACTION]
    except (KeyError, TypeError) as error:
        raise ContractError(f"{root / CONFIG_FILE}: no input_features / output_features.action ({error})") from None
    inputs: dict[str, FeatureSpec] = {}
    for key, feature in raw_inputs.items():
        shape = tuple(int(v) for v in feature.get("shape", ()))
        if key.startswith(IMAGES_PREFIX) and len(shape) == 3:
            channels, height, width = shape
            inputs[key] = FeatureSpec(key, "video", (height, width, channels))
        else:
            inputs[key] = FeatureSpec(key, "float32", shape)
    action = FeatureSpec(ACTION, "float32", tuple(int(v) for v in raw_action.get("shape", ())))
    return PolicyContract(inputs, action, None, source="lerobot", modality="rgb", **_run_settings(config))


# ---------------------------------------------------------------------- checking devices
def device_key(policy_key: str, rename: Mapping[str, str]) -> str:
    """The device feature that feeds ``policy_key`` under ``rename`` (device camera -> policy camera)."""
    if not is_camera_key(policy_key):
        return policy_key
    back = {policy: device for device, policy in rename.items()}
    camera = camera_of(policy_key)
    source = back.get(camera, camera)
    return depth_key(source) if is_depth_key(policy_key) else image_key(source)


def check_rename(rename: Mapping[str, str], device_features: Mapping[str, FeatureSpec]) -> list[str]:
    cameras = {camera_of(k) for k in device_features if is_camera_key(k)}
    return [f"rename names the camera {name!r}, which the devices do not have (they have "
            f"{', '.join(sorted(cameras)) or 'none'})" for name in rename if name not in cameras]


def contract_problems(contract: PolicyContract, device_features: Mapping[str, FeatureSpec], fps: int,
                      rename: Mapping[str, str] | None = None) -> list[str]:
    """Every way the devices cannot feed the policy (empty: they can). Extra device features are fine."""
    rename = dict(rename or {})
    problems = check_rename(rename, device_features)
    if contract.fps is not None and int(fps) != contract.fps:
        problems.append(f"the policy runs at {contract.fps} fps, the loop at {fps} (set fps={contract.fps})")
    for key, want in contract.inputs.items():
        source = device_key(key, rename)
        have = device_features.get(source)
        named = source if source == key else f"{source} (as {key})"
        if have is None:
            if is_depth_key(key):
                cam = camera_of(source)
                hint = (f"camera {cam!r} gives no depth" if image_key(cam) in device_features
                        else f"no camera {cam!r}")
                problems.append(f"the policy reads the depth {key}, but {hint}")
            elif is_camera_key(key):
                cams = sorted({camera_of(k) for k in device_features if is_camera_key(k)})
                problems.append(f"the policy reads camera {camera_of(key)!r}, the devices have "
                                f"{', '.join(cams) or 'none'} (map one with rename.<device_camera>={camera_of(key)})")
            elif key == FORCE:
                problems.append(f"the policy reads {FORCE} ({want.shape[0]} channels), but there is no force sensor")
            else:
                problems.append(f"the policy reads {key}, which no device gives")
            continue
        if is_camera_key(key):
            continue        # any resolution: images are resized to the policy's input size
        if tuple(have.shape) != tuple(want.shape):
            what = "channels" if key == FORCE else "values"
            problems.append(f"{named}: the policy reads {want.shape[0] if want.shape else want.shape} {what}, "
                            f"the device gives {have.shape[0] if have.shape else have.shape}")
        elif want.names and have.names and list(want.names) != list(have.names):
            problems.append(f"{named}: the policy's names {list(want.names)} differ from the device's {list(have.names)}")
    robot_action = device_features.get(ACTION)
    if robot_action is not None and tuple(robot_action.shape) != tuple(contract.action.shape):
        problems.append(f"the policy writes {contract.action.shape[0]} action values, the robot takes "
                        f"{robot_action.shape[0]}")
    return problems


def resolution_notes(contract: PolicyContract, device_features: Mapping[str, FeatureSpec],
                     rename: Mapping[str, str] | None = None) -> list[str]:
    """Cameras whose resolution differs from training (allowed: images are resized; worth a line)."""
    notes = []
    for key, want in contract.inputs.items():
        have = device_features.get(device_key(key, rename or {}))
        if have is not None and is_camera_key(key) and tuple(have.shape[:2]) != tuple(want.shape[:2]):
            notes.append(f"{key}: trained at {want.shape[1]}x{want.shape[0]}, the camera gives "
                         f"{have.shape[1]}x{have.shape[0]} (resized)")
    return notes


def check_devices(contract: PolicyContract, device_features: Mapping[str, FeatureSpec], fps: int,
                  rename: Mapping[str, str] | None = None, where: str = "policy") -> None:
    """Raise :class:`ContractError` naming every difference, in one line."""
    problems = contract_problems(contract, device_features, fps, rename)
    if problems:
        raise ContractError(f"{where}: the devices cannot feed this policy: " + "; ".join(problems))


__all__ = ["PolicyContract", "ContractError", "load_contract", "check_devices", "contract_problems",
           "resolution_notes", "device_key"]
