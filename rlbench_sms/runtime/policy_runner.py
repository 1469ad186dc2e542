"""A policy as the control loop's action source: the action queue, chunk merging, latency.

The loop calls :meth:`PolicyRunner.next_action` once per tick with that tick's readings. The
runner asks its :class:`~rlbench_sms.runtime.inference.InferencePolicy` for chunks and hands out one
action per tick; when it has none it holds the arm still (the last action sent, or at the episode
start the joints where they are), never replaying a stale chunk. Every action has a timestep: the
tick it is meant for (an observation taken at tick k gives a chunk whose action i is for tick k+i).

Modes (``inference.mode``):

- ``sync`` (``inference=local`` and ``inference=remote``): when the queue is empty, ask and wait; then
  execute ``n_action_steps`` actions of the chunk from its first. On hardware the wait blocks the
  loop (the ticks run late, and the timing columns say so); in the twin it costs
  ``ceil(latency / dt)`` ticks of simulated time during which the arm stands still.
- ``async``: ask again when ``queue / chunk <= chunk_size_threshold`` while the queue still runs; the
  loop never waits. A chunk arriving at tick t drops its actions for ticks before t (latency
  compensation) and merges the rest with the queued ones by timestep (``aggregate``:
  ``weighted_average`` old*w_old + new*w_new, ``latest``, ``average``). On hardware the request runs
  in a background thread; in the twin it is computed at once and delivered ``ceil(latency / dt)``
  ticks later, so an async evaluation is deterministic and independent of this machine's speed.

Latency in the twin is ``sim_latency_ms`` when set (injected), else the measured inference time.
Per-episode figures (empty-queue ticks, latency p50/p99, chunks, dropped actions) come back from
:meth:`end_episode` as episode metadata under ``inference/``.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from rlbench_sms.features import STATE, FeatureSpec
from rlbench_sms.hardware.contracts import ActionSource, HardwareError
from rlbench_sms.runtime.inference import ActionChunk, InferenceError, InferencePolicy, PolicyUnavailable
from rlbench_sms.runtime.observation import ObservationBuilder, blank_frame

log = logging.getLogger(__name__)

MODES = ("sync", "async")
TIMESTEP_KEY = "timestep"       # in every observation sent: the step its chunk starts at (see _request)
MS_PER_S = 1000.0


# ------------------------------------------------------------------------- chunk merging
def weighted_average(old: np.ndarray, new: np.ndarray, old_weight: float, new_weight: float) -> np.ndarray:
    return (old_weight * old + new_weight * new) / (old_weight + new_weight)


AGGREGATES = {
    "weighted_average": lambda old, new, w_old, w_new: weighted_average(old, new, w_old, w_new),
    "latest": lambda old, new, w_old, w_new: new,
    "average": lambda old, new, w_old, w_new: weighted_average(old, new, 1.0, 1.0),
}


class TimedQueue:
    """Actions keyed by the tick they are for, oldest first."""

    def __init__(self):
        self.actions: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.actions)

    def clear(self) -> None:
        self.actions.clear()

    def pop(self, tick: int) -> np.ndarray | None:
        """The action for ``tick`` (older ones are dropped: their tick has passed), or None."""
        for stale in [t for t in self.actions if t < tick]:
            del self.actions[stale]
        return self.actions.pop(tick, None)

    def merge(self, start_tick: int, actions: np.ndarray, now: int, aggregate: str = "latest",
              old_weight: float = 0.3, new_weight: float = 0.7) -> int:
        """Add a chunk whose action i is for tick ``start_tick + i``, at tick ``now``: actions for
        ticks before ``now`` are dropped (returned: how many); the others replace, or merge with,
        the queued action for the same tick. Queued ticks the chunk does not cover are kept."""
        combine = AGGREGATES[aggregate]
        dropped = 0
        for i, action in enumerate(actions):
            tick = start_tick + i
            if tick < now:
                dropped += 1
                continue
            old = self.actions.get(tick)
            self.actions[tick] = action if old is None else combine(old, action, old_weight, new_weight)
        self.actions = dict(sorted(self.actions.items()))
        return dropped


# ------------------------------------------------------------------------- the runner
def chunk_latency_ms(chunk: ActionChunk) -> float:
    """From asking to having the chunk: a client's round trip, else the sum of the steps."""
    return float(chunk.timing_ms.get("round_trip", sum(chunk.timing_ms.values())))


@dataclass
class RunnerConfig:
    """``conf/inference/*.yaml`` (see the module docstring)."""

    mode: str = "sync"
    n_action_steps: int | None = None        # sync: actions executed per chunk (None: the policy's)
    chunk_size_threshold: float = 0.5        # async: ask when queue / chunk <= this
    aggregate: str = "weighted_average"      # async: how overlapping chunks merge
    old_weight: float = 0.3                  # weighted_average's weights (LeRobot's 0.3 / 0.7)
    new_weight: float = 0.7
    sim_latency_ms: float | None = None      # the twin: injected latency; None = measured

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"inference.mode={self.mode!r}: one of {', '.join(MODES)}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"inference.aggregate={self.aggregate!r}: one of {', '.join(AGGREGATES)}")
        if not 0.0 <= self.chunk_size_threshold <= 1.0:
            raise ValueError(f"inference.chunk_size_threshold={self.chunk_size_threshold}: in [0, 1]")
        if self.sim_latency_ms is not None and self.sim_latency_ms < 0:
            raise ValueError(f"inference.sim_latency_ms={self.sim_latency_ms}: cannot be negative")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"inference.n_action_steps={self.n_action_steps}: at least 1")
        if self.old_weight < 0 or self.new_weight < 0 or self.old_weight + self.new_weight <= 0:
            raise ValueError("inference.old_weight / new_weight: non-negative, not both 0")


@dataclass
class _Pending:
    """A requested chunk: for the observation of ``tick``, usable from ``ready_tick`` (the twin) or
    when the thread sets ``done`` (hardware)."""

    tick: int
    ready_tick: int | None = None
    chunk: ActionChunk | None = None
    error: BaseException | None = None
    done: threading.Event | None = None
    unavailable: bool = False           # the policy had no chunk for it (a server away)


class PolicyRunner(ActionSource):
    """Drives the robot from ``policy`` (see the module docstring).

    ``fps``: the loop's rate (ticks per second). ``simulated``: the loop runs on the twin's clock
    (latency modelled in ticks); else on the wall clock (a request really takes its time).
    ``seed``: episode ``i`` samples its noise from ``seed + i``. ``warmup``: one inference on a
    blank observation at :meth:`connect`.
    """

    name = "policy"

    def __init__(self, policy: InferencePolicy, config: RunnerConfig | None = None, *, fps: int,
                 simulated: bool, seed: int = 0, rename: Mapping[str, str] | None = None, warmup: bool = True):
        self.policy = policy
        self.warmup = warmup
        self.config = config or RunnerConfig()
        self.fps = int(fps)
        self.simulated = simulated
        self.seed = int(seed)
        self.contract = policy.contract
        self.builder = ObservationBuilder(self.contract, rename)
        steps = self.config.n_action_steps or self.contract.n_action_steps
        self.n_action_steps = min(int(steps), self.contract.chunk_size)
        self.queue = TimedQueue()
        self._connected = False
        self._in_episode = False
        self._tick = 0
        self._hold: np.ndarray | None = None
        self._pending: _Pending | None = None
        self._chunk_len = self.contract.chunk_size
        self._reset_stats()

    # -- Device --------------------------------------------------------------------------------
    def action_feature(self) -> FeatureSpec:
        return self.contract.action

    def connect(self) -> None:
        """One inference on a blank observation before anything moves: the policy is known to run
        (a broken export fails here, not at the first tick) and its first, slow call (allocation,
        kernel selection) is not counted in the episodes' latency."""
        if self.warmup:
            builder = ObservationBuilder(self.contract, self.builder.rename)
            builder.push(blank_frame(self.contract, self.builder.rename))
            self._infer({**builder.build("warm-up"), TIMESTEP_KEY: 0})
            self.latencies_ms.clear()
        self._connected = True

    def disconnect(self) -> None:
        self._wait_pending()
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def start_episode(self, index: int) -> dict[str, Any]:
        self._wait_pending()
        self.policy.reset(self.seed + int(index))
        self.builder.reset()
        self.queue.clear()
        self._tick = 0
        self._hold = None
        self._in_episode = True
        self._reset_stats()
        return {"inference/seed": self.seed + int(index)}

    def end_episode(self) -> dict[str, Any]:
        self._in_episode = False
        self._wait_pending()
        return self.episode_stats()

    # -- per tick ------------------------------------------------------------------------------
    def next_action(self, observation: Mapping[str, Any], task: str) -> np.ndarray:
        self.builder.push(observation)
        if self._hold is None:
            self._hold = np.asarray(observation[STATE], dtype=np.float32).copy()
        if not self._in_episode:
            return self._hold          # between episodes (a person resets the scene): stand still
        tick = self._tick
        self._tick += 1
        self._collect(tick)
        if self.config.mode == "sync":
            if not len(self.queue) and self._pending is None:
                self._request(tick, task)
                self._collect(tick)
        elif self._pending is None and len(self.queue) / self._chunk_len <= self.config.chunk_size_threshold:
            self._request(tick, task)
            self._collect(tick)
        action = self.queue.pop(tick) if self.config.mode == "async" else self._pop_sync()
        self.stats["ticks"] += 1
        if action is None:
            self.stats["empty_queue_ticks"] += 1
            if self.stats["chunks"] > 0:
                self.stats["empty_after_first"] += 1
            return self._hold
        self._hold = np.asarray(action, dtype=np.float32)
        return self._hold

    def _pop_sync(self) -> np.ndarray | None:
        """Sync: the queue holds the executed slice of the last chunk, in order (ticks renumbered
        when it arrived, since the arm stood still while it was computed)."""
        if not len(self.queue):
            return None
        first = next(iter(self.queue.actions))
        return self.queue.actions.pop(first)

    # -- requests ------------------------------------------------------------------------------
    def _request(self, tick: int, task: str) -> None:
        observation = self.builder.build(task)
        # The step the chunk's first action is for (LeRobot's TimedObservation.timestep): in sync mode
        # the actions executed so far (the arm stood still while waiting: no step passed); in async
        # mode the tick (actions for ticks that pass while waiting are dropped: those steps pass).
        # A model ignores it; a replay of recorded actions reads its place in the recording from it.
        executed = self.stats["ticks"] - self.stats["empty_queue_ticks"]
        observation[TIMESTEP_KEY] = tick if self.config.mode == "async" else executed
        try:
            self._start_request(tick, observation)
        except PolicyUnavailable as why:
            # The server is away: hold still this tick and ask again on the next (the client's
            # reconnect backoff decides how often it really tries).
            self.stats["unavailable_ticks"] += 1
            if self.stats["unavailable_ticks"] == 1:
                log.warning("policy unavailable, holding the arm still: %s", why)

    def _start_request(self, tick: int, observation: Mapping[str, Any]) -> None:
        if self.simulated:
            pending = _Pending(tick)
            pending.chunk = self._infer(observation)
            latency_ms = (self.config.sim_latency_ms if self.config.sim_latency_ms is not None
                          else chunk_latency_ms(pending.chunk))
            pending.ready_tick = tick + math.ceil(latency_ms / MS_PER_S * self.fps - 1e-9)
            self._pending = pending
            return
        if self.config.mode == "sync":
            self._pending = _Pending(tick, chunk=self._infer(observation))     # the loop waits here
            return
        pending = _Pending(tick, done=threading.Event())

        def work() -> None:
            try:
                pending.chunk = self._infer(observation)
            except PolicyUnavailable:           # no chunk: the loop holds and asks again
                pending.unavailable = True
            except BaseException as error:     # handed to the loop thread, raised there
                pending.error = error
            finally:
                pending.done.set()

        threading.Thread(target=work, name="policy-request", daemon=True).start()
        self._pending = pending

    def _infer(self, observation: Mapping[str, Any]) -> ActionChunk:
        chunk = self.policy.infer(observation)
        actions = np.asarray(chunk.actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.contract.action.shape[0] or not len(actions):
            raise InferenceError(f"the policy gave actions of shape {actions.shape}; expected "
                                 f"(T, {self.contract.action.shape[0]})")
        if not np.isfinite(actions).all():
            raise InferenceError("the policy gave non-finite actions (NaN / inf); not sent to the robot")
        chunk.actions = actions
        self.latencies_ms.append(chunk_latency_ms(chunk))
        return chunk

    def _collect(self, tick: int) -> None:
        """Move a finished request's chunk into the queue."""
        pending = self._pending
        if pending is None:
            return
        if pending.done is not None and not pending.done.is_set():
            return
        if pending.ready_tick is not None and tick < pending.ready_tick:
            return
        self._pending = None
        if pending.error is not None:
            raise HardwareError(self.name, f"{type(pending.error).__name__}: {pending.error}")
        if pending.unavailable:
            self.stats["unavailable_ticks"] += 1
            return
        chunk = pending.chunk.actions
        self.stats["chunks"] += 1
        if self.config.mode == "sync":
            # The arm stood still while waiting: execute from the chunk's first action on.
            for i, action in enumerate(chunk[: self.n_action_steps]):
                self.queue.actions[tick + i] = action
            return
        self.stats["dropped_actions"] += self.queue.merge(
            pending.tick, chunk, tick, self.config.aggregate, self.config.old_weight, self.config.new_weight)

    def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.done is not None:
            pending.done.wait()

    # -- figures -------------------------------------------------------------------------------
    def _reset_stats(self) -> None:
        self.stats = {"ticks": 0, "chunks": 0, "empty_queue_ticks": 0, "empty_after_first": 0, "dropped_actions": 0,
                      "unavailable_ticks": 0}
        self.latencies_ms: list[float] = []

    def episode_stats(self) -> dict[str, Any]:
        """This episode's figures, as episode metadata (``inference/...``)."""
        out: dict[str, Any] = {f"inference/{k}": int(v) for k, v in self.stats.items()}
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        out["inference/latency_p50_ms"] = float(np.percentile(lat, 50)) if lat.size else 0.0
        out["inference/latency_p99_ms"] = float(np.percentile(lat, 99)) if lat.size else 0.0
        ticks = max(1, self.stats["ticks"] - self.stats["empty_queue_ticks"])
        out["inference/ticks_per_action"] = float(self.stats["ticks"] / ticks)
        return out


__all__ = ["PolicyRunner", "RunnerConfig", "TimedQueue", "AGGREGATES", "chunk_latency_ms"]
