"""Every file of every config group composes with its primary config and builds without hardware.

The group files are found by listing ``conf/``, so a new file is covered the day it is added. Each
is composed with every primary config that selects its group (``record``, ``teleoperate``,
``replay``, ``calibrate``, ``train``), its ``???`` values filled with the examples of
``conf/required_examples.yaml`` (so every ``???`` must have one), resolved, and every ``_target_``
in it must import and accept the keys written next to it. Then what the entry point builds is
built: devices (not connected, schemas available), trainers (on the CPU where the strategy
allows), loggers, callbacks, optimiser and schedule, branch specs, sweeper and Hydra callbacks. A
broken ``camera=realsense`` or ``trainer=fsdp`` fails here, not in a user's terminal. No dataset,
no training, no hardware.
"""

from __future__ import annotations

import copy
import functools
import inspect
import shlex
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from rlbench_sms.cli import EXAMPLES_FILE, example_for, examples, key_matches, missing_keys
from rlbench_sms.hardware.contracts import Camera, ForceSensor, Robot, Teleop

CONF = Path(__file__).parent.parent / "conf"
DEVICE_PRIMARIES = ("record", "teleoperate", "replay", "calibrate", "evaluate")

# Which primary configs select each group (a new group fails test_every_group_is_mapped...).
PRIMARY_OF_GROUP = {
    "robot": ("record", "teleoperate", "replay", "calibrate", "evaluate"),
    "teleop": ("record", "teleoperate", "calibrate"),
    "camera": ("record", "evaluate"),
    "force_sensor": ("record", "evaluate"),
    "tip": ("record", "evaluate"),
    "inference": ("evaluate",),
    "paths": ("record", "teleoperate", "replay", "train", "evaluate", "serve"),
    "sim": ("record", "teleoperate", "replay", "evaluate"),
    **{group: ("train",) for group in (
        "dataset", "policy", "policy/branch/depth", "policy/branch/force", "policy/branch/tip",
        "modality", "trainer", "callbacks", "logger", "hydra", "experiment", "hparams_search", "debug")},
}
# Lightning strategies whose Trainer refuses a CPU accelerator: only their target and keys are
# checked, unless a GPU is present (then the Trainer is built on the GPUs there are).
GPU_ONLY_STRATEGIES = {"fsdp"}
# Keys the code takes out of a node before instantiating it (training/build.py: augment.enabled).
KEYS_NOT_PASSED = {"augment": {"enabled"}}


def config_groups() -> dict[str, list[str]]:
    """{group path: option names} for every folder of conf/ holding yaml files."""
    groups: dict[str, list[str]] = {}
    for path in sorted(CONF.rglob("*.yaml")):
        if path.parent != CONF:
            groups.setdefault(path.parent.relative_to(CONF).as_posix(), []).append(path.stem)
    return groups


CASES = [(group, option, primary) for group, options in config_groups().items() for option in options
         for primary in PRIMARY_OF_GROUP.get(group, ())]


def group_overrides(group: str, option: str) -> list[str]:
    """Select ``option``; a policy branch comes with the modality that loads its data."""
    if group.startswith("policy/branch/"):
        return [f"modality=rgb+{group.rsplit('/', 1)[-1]}", f"{group}={option}"]
    return [f"{group}={option}"]


@functools.lru_cache(maxsize=None)
def _composed(primary: str, overrides: tuple[str, ...], hydra_node: bool) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(primary, overrides=list(overrides), return_hydra_config=hydra_node)


def compose_raw(primary: str, overrides: list[str], hydra_node: bool = False) -> DictConfig:
    """A private copy of a composition (composing costs ~0.1 s, each is done once per session)."""
    return copy.deepcopy(_composed(primary, tuple(overrides), hydra_node))


def fill(key: str) -> str:
    """The override setting a required key to its documented example (shell quoting removed)."""
    example = example_for(key)
    assert example is not None, f"{key} is ??? but has no example in {EXAMPLES_FILE.name}"
    (value,) = shlex.split(example)
    return f"{key}={value}"


def compose_filled(primary: str, overrides: list[str], tmp_path: Path, hydra_node: bool = False) -> DictConfig:
    """``primary`` composed with ``overrides`` and every ``???`` set to its example."""
    missing = missing_keys(_composed(primary, tuple(overrides), False))
    cfg = compose_raw(primary, [*overrides, *(fill(key) for key in missing)], hydra_node)
    assert missing_keys(cfg) == []
    if primary == "train":
        cfg.run_dir = str(tmp_path / "run")              # else ${hydra:runtime.output_dir}
    return cfg


def targets(node, prefix: str = ""):
    """(key, mapping) for every mapping with a ``_target_`` in a resolved container."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield prefix, node
        for key, value in node.items():
            yield from targets(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from targets(value, f"{prefix}[{i}]")


def check_targets_accept_their_keys(tree: dict) -> None:
    """Every ``_target_`` imports and its signature takes the keys given next to it."""
    for key, node in targets(tree):
        target = get_object(node["_target_"])
        kwargs = {k: v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))
                  and k not in KEYS_NOT_PASSED.get(key, ())}
        try:
            inspect.signature(target).bind_partial(**kwargs)
        except TypeError as error:
            pytest.fail(f"{key}: {node['_target_']} does not take {sorted(kwargs)}: {error}")


# ------------------------------------------------------------------ what each entry point builds
def check_devices(cfg: DictConfig) -> None:
    """Devices build without hardware, unconnected, with their dataset schemas available."""
    if cfg.get("robot") is not None:
        robot = instantiate(cfg.robot)
        assert isinstance(robot, Robot) and not robot.is_connected
        assert robot.state_feature().shape and robot.action_feature().shape
    if cfg.get("teleop") is not None:
        teleop = instantiate(cfg.teleop)
        assert isinstance(teleop, Teleop) and not teleop.is_connected
        assert teleop.action_feature().shape
    for slot, spec in (cfg.get("cameras") or {}).items():
        camera = instantiate(spec)
        assert isinstance(camera, Camera) and not camera.is_connected
        assert camera.features(slot)
    if cfg.get("force_sensor") is not None:
        sensor = instantiate(cfg.force_sensor)
        assert isinstance(sensor, ForceSensor) and not sensor.is_connected
        assert sensor.feature().shape


def check_recording(cfg: DictConfig) -> None:
    from rlbench_sms.runtime.recorder import RecordingConfig

    instantiate(cfg.dataset.video)
    instantiate(cfg.dataset.depth)
    RecordingConfig(single_task=cfg.dataset.single_task, fps=int(cfg.fps),
                    num_episodes=int(cfg.dataset.num_episodes), episode_time_s=float(cfg.dataset.episode_time_s),
                    reset_time_s=float(cfg.dataset.reset_time_s), **OmegaConf.to_container(cfg.recording))


def check_calibrate(group: str, option: str, cfg: DictConfig) -> None:
    """``calibrate robot=...`` becomes the flags of the same arm (a mock has nothing to calibrate)."""
    from rlbench_sms.tools.calibrate import overrides_to_flags

    if "port" not in cfg[group].config:
        with pytest.raises(ValueError, match="nothing to calibrate"):
            overrides_to_flags([f"{group}={option}"])
        return
    port = cfg[group].config.port
    flags = overrides_to_flags([f"{group}={option}", f"{group}.config.port={port}"])
    assert flags[flags.index("--port") + 1] == port
    assert flags[flags.index("--role") + 1] == ("follower" if group == "robot" else "leader")


def check_trainer(cfg: DictConfig) -> None:
    """The Trainer builds (on the CPU when there is no GPU) through train.py's own builder."""
    import torch
    from pytorch_lightning import Trainer
    from pytorch_lightning.strategies import StrategyRegistry

    from rlbench_sms.training.run import build_trainer

    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, str) and strategy != "auto":
        assert strategy in StrategyRegistry, f"trainer.strategy={strategy!r} is not a Lightning strategy"
    if strategy in GPU_ONLY_STRATEGIES:
        gpus = torch.cuda.device_count()
        if not gpus:
            return                                        # target + keys were checked
        cfg.trainer.devices = min(cfg.trainer.devices, gpus)
    else:
        cfg.trainer.accelerator = "cpu"                   # the same settings on the CPU: runs anywhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer(cfg, [], [])
    assert isinstance(trainer, Trainer) and trainer.max_steps == cfg.trainer.max_steps


def check_callbacks(cfg: DictConfig) -> None:
    from pytorch_lightning import Callback

    from rlbench_sms.training.run import instantiate_group

    assert all(isinstance(cb, Callback) for cb in instantiate_group(cfg.get("callbacks")))


def check_loggers(cfg: DictConfig) -> None:
    from pytorch_lightning.loggers import Logger

    from rlbench_sms.training.run import build_loggers

    if cfg.logger.get("wandb") is not None:
        pytest.importorskip("wandb")                      # an optional extra: target + keys were checked
    assert all(isinstance(logger, Logger) for logger in build_loggers(cfg))


def check_policy(cfg: DictConfig) -> None:
    """Branches agree with the modality and parse; the optimiser and the schedule build."""
    import torch

    from rlbench_sms.policy.branches.config import parse_branches
    from rlbench_sms.training.plan import branch_settings, check_branches, parse_modality

    modality = cfg.dataset.modality
    branches = branch_settings(cfg)
    check_branches(parse_modality(modality), branches, modality)
    assert sorted(parse_branches(branches).active) == sorted(branches)
    optimizer = instantiate(cfg.policy.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    instantiate(cfg.policy.scheduler)(optimizer)


def check_hydra_node(cfg: DictConfig) -> None:
    """Run and sweep folders resolve; sweeper, launcher and Hydra callbacks import and build."""
    HydraConfig.instance().set_config(cfg)
    node = {k: OmegaConf.to_container(cfg.hydra[k], resolve=True)
            for k in ("run", "sweep", "sweeper", "launcher", "callbacks")}
    check_targets_accept_their_keys(node)
    for spec in (node["callbacks"] or {}).values():
        instantiate(spec)
    if (node["sweeper"] or {}).get("sampler"):
        instantiate(node["sweeper"]["sampler"])


TRAIN_CHECKS = {"trainer": check_trainer, "debug": check_trainer, "experiment": check_trainer,
                "callbacks": check_callbacks, "logger": check_loggers}


# ------------------------------------------------------------------ tests
def test_every_group_is_mapped_to_its_primary_config():
    unmapped = sorted(set(config_groups()) - set(PRIMARY_OF_GROUP))
    assert not unmapped, f"conf/ groups without a primary config in PRIMARY_OF_GROUP: {unmapped}"
    assert not set(PRIMARY_OF_GROUP) - set(config_groups())
    assert all((CONF / f"{p}.yaml").is_file() for ps in PRIMARY_OF_GROUP.values() for p in ps)


def test_required_examples_table_has_no_dead_entries():
    """Every ``???`` needs an example (``fill`` asserts it in the cases below); every example
    must still belong to a ``???`` somewhere."""
    keys = {key for group, option, primary in CASES
            for key in missing_keys(compose_raw(primary, group_overrides(group, option)))}
    dead = [pattern for pattern in examples() if not any(key_matches(pattern, key) for key in keys)]
    assert not dead, f"{EXAMPLES_FILE.name}: no ??? left for {dead}"


@pytest.mark.parametrize("group,option,primary", CASES, ids=[f"{p}:{g}={o}" for g, o, p in CASES])
def test_group_file_composes_and_builds(group, option, primary, tmp_path):
    overrides = group_overrides(group, option)
    if group in ("hydra", "hparams_search"):
        check_hydra_node(compose_filled(primary, overrides, tmp_path, hydra_node=True))
    cfg = compose_filled(primary, overrides, tmp_path)
    check_targets_accept_their_keys(OmegaConf.to_container(cfg, resolve=True))   # everything resolves
    if primary in DEVICE_PRIMARIES:
        check_devices(cfg)
    if primary == "record":
        check_recording(cfg)
    if primary == "calibrate":
        check_calibrate(group, option, cfg)
    if primary == "train":
        if group in ("policy", "modality", "experiment") or group.startswith("policy/branch/"):
            check_policy(cfg)
        TRAIN_CHECKS.get(group, lambda _: None)(cfg)


def test_the_checks_catch_a_broken_file(tmp_path):
    """What a user would hit: a key the target does not take, a strategy Lightning does not know."""
    tree = OmegaConf.to_container(compose_filled("record", ["camera=realsense"], tmp_path), resolve=True)
    tree["cameras"]["front"]["config"]["serial"] = "x"         # a typo'd key
    with pytest.raises(pytest.fail.Exception, match="cameras.front.config"):
        check_targets_accept_their_keys(tree)
    train = compose_filled("train", ["trainer=fsdp"], tmp_path)
    train.trainer.strategy = "fsdpp"
    with pytest.raises(AssertionError, match="fsdpp"):
        check_trainer(train)


def test_teleoperating_the_twin_keeps_to_the_wall_clock():
    """A person moves the leader: the twin must not run simulated time ahead of them."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        teleop = compose("teleoperate", overrides=["robot=sim"])
        record = compose("record", overrides=["robot=sim", "dataset.single_task=x"])
    assert teleop.sim.realtime is True and record.sim.realtime is False
