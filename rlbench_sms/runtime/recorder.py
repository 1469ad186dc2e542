"""The recording loop: teleoperate the robot at a fixed rate and write every tick to a dataset.

Per tick (LeRobot's order): read the joints, every camera and the force sensor -> read the
teleop -> send the action to the robot -> store the *teleop* action with the observation. The
loop waits on absolute deadlines (:mod:`runtime.clock`); video is encoded in background threads by
the dataset writer, so the loop keeps its rate. Each frame also stores when it was really
captured (``timing.capture_s``) and whether its tick ran late (``timing.late``), so a slow tick
is visible in the data instead of silently stamped at the nominal time; per-episode timing
(achieved fps, p99 period, late ticks) goes into the episode metadata.

Every reading keeps its age: a camera frame reused from up to ``camera_max_age_s`` ago is not
stored as if taken at the tick. Per camera, ``timing.<cam>_age_s`` is the tick's time (its joint
reading, ``timing.capture_s``) minus the frame's capture time, and ``timing.force_age_s`` the same
for the force reading; a camera that stamps frames itself (RealSense) adds
``timing.<cam>_device_s``, its own capture time on the ``timing.capture_s`` axis, and the episode
metadata names that clock (``timing/<cam>_device_clock``).

The loop runs on the devices' clock (:func:`~rlbench_sms.runtime.clock.clock_of`: the twin's
simulated time, else the wall clock). Every device's episode hooks are called around each episode
(``start_episode`` after the force tare and before the first tick, ``end_episode`` after the last
tick); the metadata they return goes into the episode's row of ``meta/episodes``, and a ``"task"``
from ``start_episode`` is the episode's task text. A device whose ``episode_done()`` turns true ends
the episode at that tick (the twin, evaluating, at the first success).

The action source is a teleop device or a policy runner (``ActionSource.next_action`` gets the
tick's readings); with ``store_sent_action`` the stored action is what the robot was sent after its
safety clipping, else the source's.

``num_episodes`` counts the episodes *this run* records: resuming a dataset of 10 with
``num_episodes=5`` ends with 15 (LeRobot's habit).

Ctrl-C or an exception saves the frames recorded so far before it propagates; a SIGKILL loses
at most the open episode (the writer's commit protocol).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from rlbench_sms.data.metadata import EPISODE_BASE_COLUMNS
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import (ACTION, CAPTURE_TIME, FORCE, FORCE_AGE, LATE, STATE, FeatureSpec,
                                  camera_age_key, camera_device_time_key, depth_key, image_key,
                                  timing_features)
from rlbench_sms.hardware.contracts import (ActionSource, Camera, Device, ForceSensor, HardwareError, Robot,
                                            Sensor)
from rlbench_sms.runtime.clock import Clock, LoopStats, LoopTimer, clock_of
from rlbench_sms.runtime.keyboard import VERDICT_HELP, VERDICTS, Command, TerminalKeys

log = logging.getLogger(__name__)

# Episode metadata: which clock a camera's device timestamps came from (a RealSense domain name).
DEVICE_CLOCK_EXTRA = "timing/{camera}_device_clock"
# The entry of a start_episode hook's metadata that is the episode's task text, not metadata.
TASK_HOOK_KEY = "task"
# Episode metadata a device hook may not set: the writer's own columns, the column prefixes the
# reader does not hand back as metadata, and the recorder's own timing.
RESERVED_EPISODE_KEYS = EPISODE_BASE_COLUMNS + ("dataset_from_index", "dataset_to_index")
RESERVED_EPISODE_PREFIXES = ("stats/", "videos/", "data/", "meta/", "timing/")
HOOK_VALUE_TYPES = (bool, int, float, str)
# Episode metadata: the operator's verdict on an evaluation episode (success / failure / discard).
VERDICT_KEY = "eval/verdict"
VERDICT_POLL_S = 0.05          # how often the end-of-episode question looks for a key (wall time)


@dataclass
class RecordingConfig:
    """Recording options; names follow LeRobot's ``--dataset.*`` flags where they exist."""

    single_task: str
    fps: int = 30
    num_episodes: int = 50              # recorded by this run (on resume: this many more)
    episode_time_s: float = 60.0
    reset_time_s: float = 60.0
    camera_max_age_s: float = 0.1       # an older latest frame is waited on, not reused
    camera_timeout_s: float = 0.5       # a camera with no new frame for this long is a fault
    late_threshold_s: float = 0.010     # a tick this late (after its deadline) is flagged
    status_interval_s: float = 0.5      # live status line refresh
    gil_switch_interval_s: float = 0.001   # see Recorder.run
    # Store the action the robot was sent (after its safety clipping) instead of the source's:
    # an evaluation records what the arm was really told; a teleop recording, LeRobot's habit.
    store_sent_action: bool = False
    # Ask the operator for a verdict at the end of an episode they did not judge during it
    # (evaluation on a real arm; needs a terminal: unattended, the episode stays unjudged).
    ask_verdict: bool = False


@dataclass
class EpisodeResult:
    index: int
    frames: int
    stats: LoopStats
    extra: dict[str, Any] = field(default_factory=dict)     # the episode metadata saved with it
    task: str = ""                                            # the episode's task text


@dataclass
class RecordingSummary:
    episodes: list[EpisodeResult] = field(default_factory=list)
    stopped_early: bool = False


def recording_features(robot: Robot, cameras: Mapping[str, Camera],
                       force_sensor: ForceSensor | None, sensors: Sequence[Sensor] = ()) -> list[FeatureSpec]:
    """The dataset schema of a recording, from the devices' schemas (no hardware needed)."""
    features = [robot.state_feature(), robot.action_feature()]
    for name, camera in cameras.items():
        features += camera.features(name)
    if force_sensor is not None:
        features.append(force_sensor.feature())
    for sensor in sensors:
        features += sensor.features()
    device_clocks = {name: bool(getattr(camera, "has_device_clock", False))
                     for name, camera in cameras.items()}
    return features + timing_features(device_clocks, force_sensor is not None)


def hook_metadata(device: Device, hook: str, values: Any, allow_task: bool) -> dict[str, Any]:
    """A device hook's episode metadata, checked: a dict of bool/int/float/str (numpy scalars
    become Python ones) under keys that collide with no standard column. Anything else is a
    one-line :class:`HardwareError` naming the device and the key, raised before it can cost a
    recorded episode at save time."""
    if not isinstance(values, Mapping):
        raise HardwareError(device.name, f"{hook}() returned {type(values).__name__}, not a dict")
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise HardwareError(device.name, f"{hook}() returned the key {key!r}: keys are non-empty strings")
        if key == TASK_HOOK_KEY and not allow_task:
            raise HardwareError(device.name, f"{hook}() returned {key!r}: only start_episode names the task")
        if key in RESERVED_EPISODE_KEYS or key.startswith(RESERVED_EPISODE_PREFIXES):
            raise HardwareError(device.name, f"{hook}() returned {key!r}: a reserved episode metadata name")
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, HOOK_VALUE_TYPES):
            raise HardwareError(device.name, f"{hook}() returned {key}={value!r}: episode metadata "
                                             "must be a bool, int, float or str")
        if key == TASK_HOOK_KEY and not (isinstance(value, str) and value.strip()):
            raise HardwareError(device.name, f"{hook}() returned {key}={value!r}: the task must be "
                                             "a non-empty string")
        checked[key] = value
    return checked


def check_time_bases(clock: Clock, cameras: Mapping[str, Camera], force_sensor: ForceSensor | None,
                     sensors: Sequence[Sensor] = ()) -> None:
    """Refuse, in one line, a camera or sensor stamped on another clock than the loop's (a mock
    camera beside the twin's robot): its readings' ages against the tick would be nonsense."""
    loop = getattr(clock, "time_base", "monotonic")
    readers = {f"cameras.{name}": camera for name, camera in cameras.items()}
    if force_sensor is not None:
        readers["force_sensor"] = force_sensor
    readers.update({getattr(sensor, "name", type(sensor).__name__): sensor for sensor in sensors})
    other = {key: d.time_base for key, d in readers.items() if getattr(d, "time_base", "monotonic") != loop}
    if other:
        hint = "; record the twin with its own devices (camera=sim force_sensor=sim)" if loop == "sim" else ""
        raise HardwareError(", ".join(other), f"stamped on {next(iter(other.values()))} time while the "
                                              f"loop runs on {loop} time{hint}")


class StatusLine:
    """One live line on a terminal; periodic log lines otherwise."""

    def __init__(self, interval_s: float, stream=None):
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._last = 0.0
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())

    def due(self) -> bool:
        """Whether an update would be shown now (so callers build the text only then)."""
        interval = self.interval_s if self._live else 10 * self.interval_s
        return time.monotonic() - self._last >= interval

    def update(self, text: str) -> None:
        self._last = time.monotonic()
        if self._live:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, text: str) -> None:
        self.stream.write(("\r\x1b[2K" if self._live else "") + text + "\n")
        self.stream.flush()


class Recorder:
    """Records ``config.num_episodes`` new episodes into ``writer`` (a resumed dataset keeps its
    episodes and gains that many more).

    Per-reading timing columns (:func:`~rlbench_sms.features.is_reading_timing_key`) are stored
    where the writer's dataset has them: a dataset recorded before they existed is resumed
    without them (``record_app.open_dataset`` says so).

    The loop runs on ``clock``; by default the devices' own (:func:`clock_of`), so sim devices
    always get their simulated time.
    """

    def __init__(self, robot: Robot, teleop: ActionSource, cameras: Mapping[str, Camera],
                 force_sensor: ForceSensor | None, writer: DatasetWriter, config: RecordingConfig,
                 keys: TerminalKeys | None = None, display: Callable[[dict], None] | None = None,
                 status: StatusLine | None = None, clock: Clock | None = None,
                 sensors: Sequence[Sensor] = ()):
        self.robot, self.teleop = robot, teleop
        self.sensors = list(sensors)          # other per-tick columns (the twin's object tip)
        self.cameras = dict(cameras)
        self.force_sensor = force_sensor
        self.writer = writer
        self.config = config
        self.keys = keys or TerminalKeys()
        self.display = display
        self.status = status or StatusLine(config.status_interval_s)
        # Hooks are called in this order, and later metadata wins on a shared key.
        self.devices: list[Device] = [robot, teleop, *self.cameras.values()] + (
            [force_sensor] if force_sensor is not None else []) + self.sensors
        self.clock = clock if clock is not None else clock_of(self.devices)
        check_time_bases(self.clock, self.cameras, self.force_sensor, self.sensors)
        self.timer = LoopTimer(config.fps, config.late_threshold_s, self.clock)
        self._force_raw: list[np.ndarray] = []
        self._force_raw_t: list[np.ndarray] = []
        self._device_clocks: dict[str, set[str]] = {}    # camera -> clocks seen this episode
        self._task = config.single_task                  # this episode's (a hook may name it)
        self._hook_extra: dict[str, Any] = {}            # the devices' metadata for this episode
        self._episode_open = False                       # start_episode called, end_episode not

    def _stores(self, key: str) -> bool:
        return key in self.writer.features

    # -- one tick -----------------------------------------------------------------------------
    def _step(self, t0: float, late: bool, record: bool) -> dict:
        joints = self.robot.read_joints()
        tick = joints.timestamp                 # the row's time: what timing.capture_s stores
        frame: dict = {STATE: joints.positions}
        for name, camera in self.cameras.items():
            shot = camera.read_latest(self.config.camera_max_age_s, self.config.camera_timeout_s)
            if shot.color is not None:
                frame[image_key(name)] = shot.color
            if shot.depth is not None:
                frame[depth_key(name)] = shot.depth
            if self._stores(camera_age_key(name)):
                frame[camera_age_key(name)] = np.float32(tick - shot.timestamp)
            if self._stores(camera_device_time_key(name)):
                # A driver that gave no stamp this time: the host receive time is the best estimate.
                stamped = shot.timestamp if shot.device_timestamp is None else shot.device_timestamp
                frame[camera_device_time_key(name)] = np.float32(stamped - t0)
                if record:
                    self._device_clocks.setdefault(name, set()).add(shot.device_clock or "host_receive")
        if self.force_sensor is not None:
            force = self.force_sensor.read()
            frame[FORCE] = force.value
            if self._stores(FORCE_AGE):
                frame[FORCE_AGE] = np.float32(tick - force.timestamp)
            if record and force.raw.size:
                self._force_raw.append(force.raw)
                self._force_raw_t.append(force.raw_timestamps - t0)
        for sensor in self.sensors:
            frame.update(sensor.read().values)
        # The action source sees this tick's readings (a policy reads them; a leader arm does not).
        action = self.teleop.next_action(frame, self._task)
        sent = self.robot.send_action(action)
        frame[ACTION] = sent if self.config.store_sent_action else action
        frame[CAPTURE_TIME] = np.float32(tick - t0)
        frame[LATE] = np.bool_(late)
        return frame

    # -- loops --------------------------------------------------------------------------------
    def _loop(self, duration_s: float, record: bool, label: str) -> Command | None:
        t0 = self.timer.start()
        for _ in range(round(duration_s * self.config.fps)):
            late = self.timer.tick()
            frame = self._step(t0, late, record)
            if record:
                self.writer.add_frame(frame, self._task)
            if self.display is not None:
                self.display(frame)
            if record and any(device.episode_done() for device in self.devices):
                return None           # the episode is over before its time (a success in the twin)
            command = self.keys.poll()
            if command is not None:
                return command
            if self.status.due():
                self.status.update(f"{label}  {self.timer.elapsed_s:5.1f}/{duration_s:.0f} s  "
                                   f"{self.timer.stats().line()}  encoder backlog "
                                   f"{self.writer.encoder_backlog}   {self.keys.help if self.keys.attached else ''}")
        return None

    def _save(self) -> EpisodeResult:
        stats = self.timer.stats()
        frames = self.writer.episode_length
        attachments = {}
        if self._force_raw:
            raw = np.concatenate(self._force_raw)
            names = self.force_sensor.feature().names
            attachments[FORCE] = pa.table(
                {"time_s": np.concatenate(self._force_raw_t).astype(np.float64),
                 **{str(n): raw[:, i].astype(np.float32) for i, n in enumerate(names)}})
        extra = stats.as_dict()
        for name, clocks in self._device_clocks.items():
            extra[DEVICE_CLOCK_EXTRA.format(camera=name)] = ",".join(sorted(clocks))
        extra.update(self._hook_extra)       # no clash: hooks may not use timing/ names
        index = self.writer.save_episode(extra=extra, attachments=attachments)
        self._clear_episode_buffers()
        return EpisodeResult(index, frames, stats, extra, self._task)

    def _clear_episode_buffers(self) -> None:
        self._force_raw, self._force_raw_t = [], []
        self._device_clocks = {}
        self._hook_extra = {}

    # -- episode hooks ------------------------------------------------------------------------
    def _start_episode(self) -> None:
        """Every device's ``start_episode`` for the episode about to be recorded (the index it
        will be saved under: a re-recorded episode gets the same one again)."""
        index = self.writer.num_episodes
        merged: dict[str, Any] = {}
        for device in self.devices:
            merged.update(hook_metadata(device, "start_episode", device.start_episode(index),
                                        allow_task=True))
        self._task = merged.pop(TASK_HOOK_KEY, self.config.single_task)
        self._hook_extra = merged
        self._episode_open = True

    def _end_episode(self) -> None:
        """Every device's ``end_episode``, once per ``start_episode``; merges their metadata."""
        if not self._episode_open:
            return
        self._episode_open = False
        for device in self.devices:
            self._hook_extra.update(hook_metadata(device, "end_episode", device.end_episode(),
                                                  allow_task=False))

    def _end_episode_after(self, error: BaseException) -> None:
        """``end_episode`` while an error propagates: the frames matter more than the metadata,
        so a device that fails here (likely the one that failed the loop) is only logged."""
        try:
            self._end_episode()
        except Exception as hook_error:
            log.warning("end_episode after %s failed: %s", type(error).__name__, hook_error)

    def _judge(self, command: Command | None, label: str) -> Command | None:
        """The operator's verdict, from a key pressed during the episode or asked for now; stored
        as episode metadata. Returns what the loop does next (STOP when asked to stop)."""
        verdict = command if command in VERDICTS else None
        if verdict is None and self.config.ask_verdict and self.keys.attached:
            self.status.done(f"{label}: how did it go?  {VERDICT_HELP}  ([q] stop)")
            while verdict is None:
                key = self.keys.poll()
                if key in VERDICTS:
                    verdict = key
                elif key is Command.STOP:
                    command = Command.STOP
                    break
                else:
                    time.sleep(VERDICT_POLL_S)
        if verdict is not None:
            self._hook_extra[VERDICT_KEY] = verdict.value
        return Command.STOP if command is Command.STOP else None

    def run(self) -> RecordingSummary:
        """Record ``num_episodes`` new episodes, or until the user stops."""
        summary = RecordingSummary()
        cfg = self.config
        # Encoder threads hold the GIL between their C calls; with Python's default 5 ms switch
        # interval the loop thread can wait that long at each wake-up. A shorter interval hands
        # the GIL back to the loop sooner (benchmarks/record_loop.py: p99 period 38 ms -> 34 ms).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(cfg.gil_switch_interval_s)
        try:
            return self._run(summary)
        finally:
            sys.setswitchinterval(switch_interval)

    def _run(self, summary: RecordingSummary) -> RecordingSummary:
        cfg = self.config
        target = self.writer.num_episodes + cfg.num_episodes     # a resumed dataset gains num_episodes
        with self.keys:
            try:
                while self.writer.num_episodes < target:
                    done = cfg.num_episodes - (target - self.writer.num_episodes)
                    label = f"episode {done + 1}/{cfg.num_episodes}"
                    if self.force_sensor is not None:
                        self.force_sensor.tare()
                    self._start_episode()
                    command = self._loop(cfg.episode_time_s, record=True, label=label)
                    self._end_episode()
                    if command is not Command.RERECORD:
                        command = self._judge(command, label)
                    if command is Command.RERECORD:
                        self.writer.clear_episode()
                        self._clear_episode_buffers()
                        self.status.done(f"{label}: discarded, re-recording")
                        continue
                    result = self._save()
                    summary.episodes.append(result)
                    self.status.done(f"{label}: saved {result.frames} frames, {result.stats.line()}")
                    if command is Command.STOP:
                        summary.stopped_early = True
                        break
                    if self.writer.num_episodes < target and cfg.reset_time_s > 0 \
                            and not any(device.resets_scene for device in self.devices):
                        if self._loop(cfg.reset_time_s, record=False, label="reset") is Command.STOP:
                            summary.stopped_early = True
                            break
            except BaseException as error:
                # Ctrl-C, a lost servo bus, a stalled camera: keep what was recorded.
                self._end_episode_after(error)
                if self.writer.episode_length > 0:
                    result = self._save()
                    summary.episodes.append(result)
                    self.status.done(f"saved the {result.frames} frames of episode {result.index} "
                                     f"recorded before: {type(error).__name__}: {error}")
                if isinstance(error, KeyboardInterrupt):
                    summary.stopped_early = True
                    return summary
                raise
        return summary
