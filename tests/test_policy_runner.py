"""The action queue of evaluation: sync and async chunking, latency in simulated ticks, merging by
timestep, latency compensation, holding still, and the force window fed to the policy."""

from __future__ import annotations

import numpy as np
import pytest

from rlbench_sms.features import ACTION, FORCE, STATE, FeatureSpec, force_feature, joint_feature
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.runtime.contract import PolicyContract
from rlbench_sms.runtime.inference import ActionChunk, InferenceError
from rlbench_sms.runtime.observation import ObservationBuilder
from rlbench_sms.runtime.policy_runner import AGGREGATES, PolicyRunner, RunnerConfig, TimedQueue

FPS, CHUNK = 30, 50


def contract(chunk: int = CHUNK, n_action_steps: int | None = None, force_window: int = 1) -> PolicyContract:
    inputs = {STATE: joint_feature(STATE)}
    if force_window:
        inputs[FORCE] = force_feature()
    return PolicyContract(inputs, joint_feature(ACTION), FPS, chunk, n_action_steps or chunk, force_window)


class CountingPolicy:
    """Chunk k (k = 0, 1, ...) asked at observation tick t holds, in every joint, t + i for action i:
    the value of an executed action says which tick it was meant for."""

    def __init__(self, contract: PolicyContract, infer_ms: float = 1.0, fail_on: int | None = None):
        self.contract = contract
        self.infer_ms = infer_ms
        self.fail_on = fail_on
        self.observations: list[dict] = []
        self.seeds: list[int | None] = []

    def infer(self, observation):
        if self.fail_on is not None and len(self.observations) == self.fail_on:
            raise InferenceError("the model fell over")
        self.observations.append(observation)
        tick = float(observation[STATE][0])        # the test puts the tick in the state
        actions = np.repeat((tick + np.arange(self.contract.chunk_size, dtype=np.float32))[:, None], 6, axis=1)
        return ActionChunk(actions, {"infer": self.infer_ms})

    def reset(self, seed=None):
        self.seeds.append(seed)

    def close(self):
        pass


def run(runner: PolicyRunner, ticks: int, episode: int = 0) -> list[np.ndarray]:
    runner.connect()
    runner.start_episode(episode)
    sent = []
    for tick in range(ticks):
        frame = {STATE: np.full(6, tick, np.float32), FORCE: np.full(6, tick, np.float32)}
        sent.append(runner.next_action(frame, "press"))
    return sent


def test_sync_at_zero_latency_never_waits_and_executes_chunks_in_order():
    policy = CountingPolicy(contract())
    runner = PolicyRunner(policy, RunnerConfig(mode="sync", sim_latency_ms=0), fps=FPS, simulated=True, warmup=False)
    sent = run(runner, 120)
    assert [a[0] for a in sent] == list(range(120))      # asked at 0, 50, 100: each action on time
    stats = runner.end_episode()
    assert stats["inference/chunks"] == 3 and stats["inference/empty_queue_ticks"] == 0
    assert stats["inference/ticks_per_action"] == 1.0


def test_sync_with_latency_stands_still_for_ceil_latency_over_dt_ticks_per_chunk():
    policy = CountingPolicy(contract())
    runner = PolicyRunner(policy, RunnerConfig(mode="sync", sim_latency_ms=300), fps=FPS, simulated=True, warmup=False)
    sent = run(runner, 2 * (CHUNK + 9))
    # 300 ms at 30 Hz = 9 ticks standing still (holding the joints where they were), then 50 actions.
    assert all(np.array_equal(a, np.zeros(6)) for a in sent[:9])
    assert [a[0] for a in sent[9:59]] == list(range(50))
    assert [a[0] for a in sent[59:68]] == [49.0] * 9       # holds the last action sent: never a stale chunk
    stats = runner.end_episode()
    assert stats["inference/empty_queue_ticks"] == 18
    assert stats["inference/ticks_per_action"] == pytest.approx(118 / 100)


def test_async_never_waits_after_the_first_chunk_and_drops_passed_actions():
    policy = CountingPolicy(contract())
    runner = PolicyRunner(policy, RunnerConfig(mode="async", sim_latency_ms=300, aggregate="latest"),
                          fps=FPS, simulated=True, warmup=False)
    sent = run(runner, 300)
    stats = runner.end_episode()
    assert stats["inference/empty_queue_ticks"] == 9        # only before the first chunk
    assert stats["inference/empty_after_first"] == 0
    # Every executed action was meant for the tick it ran at (its value), despite 9 ticks of latency.
    assert [a[0] for a in sent[9:]] == list(range(9, 300))
    # The first action of each later chunk (for the observation's tick) had passed when it arrived.
    assert stats["inference/dropped_actions"] >= 9 * (stats["inference/chunks"] - 1)
    assert stats["inference/ticks_per_action"] == pytest.approx(300 / 291)


def test_async_asks_again_at_the_threshold():
    policy = CountingPolicy(contract())
    runner = PolicyRunner(policy, RunnerConfig(mode="async", sim_latency_ms=0, chunk_size_threshold=0.5),
                          fps=FPS, simulated=True, warmup=False)
    run(runner, 60)
    # Asked at tick 0 (empty), then when 25 of 50 were left: after 25 actions ran (tick 25).
    assert [float(o[STATE][0]) for o in policy.observations[:2]] == [0.0, 25.0]


def test_weighted_average_merges_overlapping_actions_by_timestep():
    queue = TimedQueue()
    queue.merge(0, np.full((4, 1), 10.0), now=0)
    dropped = queue.merge(1, np.full((4, 1), 20.0), now=2, aggregate="weighted_average",
                          old_weight=0.3, new_weight=0.7)
    assert dropped == 1                                     # the action for tick 1 had passed
    assert [float(queue.actions[t][0]) for t in (2, 3)] == pytest.approx([17.0, 17.0])
    assert float(queue.actions[4][0]) == 20.0               # only the new chunk covers tick 4
    assert queue.pop(3) is not None and 2 not in queue.actions   # popping tick 3 drops tick 2
    assert AGGREGATES["average"](np.array([0.0]), np.array([1.0]), 0.3, 0.7)[0] == 0.5
    assert AGGREGATES["latest"](np.array([0.0]), np.array([1.0]), 0.3, 0.7)[0] == 1.0


def test_episodes_seed_the_policy_and_between_episodes_the_arm_holds():
    policy = CountingPolicy(contract())
    runner = PolicyRunner(policy, RunnerConfig(mode="sync", sim_latency_ms=0), fps=FPS, simulated=True, seed=40, warmup=False)
    run(runner, 3, episode=2)
    runner.end_episode()
    held = runner.next_action({STATE: np.full(6, 99.0, np.float32), FORCE: np.zeros(6, np.float32)}, "x")
    assert policy.seeds[-1] == 42
    assert held[0] == 2.0               # the last action sent, not a new request
    assert len(policy.observations) == 1


def test_a_failing_policy_is_one_hardware_error_and_bad_chunks_never_reach_the_robot():
    runner = PolicyRunner(CountingPolicy(contract(), fail_on=0), RunnerConfig(), fps=FPS, simulated=True, warmup=False)
    with pytest.raises(InferenceError, match="fell over"):
        run(runner, 1)

    class NaNPolicy(CountingPolicy):
        def infer(self, observation):
            chunk = super().infer(observation)
            chunk.actions[3, 2] = np.nan
            return chunk

    runner = PolicyRunner(NaNPolicy(contract()), RunnerConfig(), fps=FPS, simulated=True, warmup=False)
    with pytest.raises(InferenceError, match="non-finite"):
        run(runner, 1)


def test_async_on_the_wall_clock_does_not_block_the_loop():
    import threading

    release = threading.Event()

    class SlowPolicy(CountingPolicy):
        def infer(self, observation):
            release.wait(5)
            return super().infer(observation)

    runner = PolicyRunner(SlowPolicy(contract()), RunnerConfig(mode="async"), fps=FPS, simulated=False, warmup=False)
    sent = run(runner, 5)                       # the request is still computing: the loop goes on
    assert all(np.array_equal(a, np.zeros(6)) for a in sent)
    release.set()
    runner._pending.done.wait(5)
    frame = {STATE: np.full(6, 5.0, np.float32), FORCE: np.zeros(6, np.float32)}
    assert runner.next_action(frame, "x")[0] == 5.0     # asked at tick 0: actions 0-4 had passed
    assert runner.end_episode()["inference/dropped_actions"] == 5


def test_async_errors_from_the_background_request_surface_in_the_loop():
    runner = PolicyRunner(CountingPolicy(contract(), fail_on=0), RunnerConfig(mode="async"), fps=FPS,
                          simulated=False, warmup=False)
    runner.connect()
    runner.start_episode(0)
    frame = {STATE: np.zeros(6, np.float32), FORCE: np.zeros(6, np.float32)}
    with pytest.raises(HardwareError, match="policy: InferenceError: the model fell over"):
        runner.next_action(frame, "x")          # asks (raises here if the request already failed)
        runner._pending.done.wait(5)
        runner.next_action(frame, "x")          # the next tick collects the failure


def test_config_values_are_checked():
    for bad in ({"mode": "fast"}, {"aggregate": "median"}, {"chunk_size_threshold": 1.5},
                {"sim_latency_ms": -1}, {"n_action_steps": 0}):
        with pytest.raises(ValueError, match="inference."):
            RunnerConfig(**bad)


# ------------------------------------------------------------------------- the force window
def test_force_window_matches_the_datamodule_window(small_sample):
    """Fed an episode tick by tick, the builder gives the force history the training items held."""
    from rlbench_sms.data.datamodule import FrameDataset

    window = 3
    dataset = FrameDataset(small_sample, [STATE, FORCE], chunk_size=1, force_window=window)
    builder = ObservationBuilder(contract(force_window=window))
    first = dataset.ep_start[1]
    for row in range(first, first + 6):
        item = dataset[row]
        current = item[FORCE][-1].numpy()           # this tick's reading
        builder.push({STATE: item[STATE].numpy(), FORCE: current})
        obs = builder.build("t")
        np.testing.assert_array_equal(obs[FORCE], item[FORCE].numpy())
        np.testing.assert_array_equal(obs[FORCE + "_is_pad"], item[FORCE + "_is_pad"].numpy())
    builder.reset()
    with pytest.raises(RuntimeError):
        builder.build("t")


def test_builder_renames_cameras_and_puts_channels_first():
    spec = FeatureSpec("observation.images.front", "video", (4, 5, 3))
    c = PolicyContract({STATE: joint_feature(STATE), spec.key: spec,
                        "observation.images.front_depth": FeatureSpec("observation.images.front_depth", "video",
                                                                      (4, 5, 1))},
                       joint_feature(ACTION), FPS, 4, 4)
    builder = ObservationBuilder(c, rename={"top": "front"})
    rgb = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    depth = np.arange(20, dtype=np.uint16).reshape(4, 5)
    builder.push({STATE: np.zeros(6, np.float32), "observation.images.top": rgb,
                  "observation.images.top_depth": depth, "observation.images.other": rgb})
    obs = builder.build("task")
    assert obs["observation.images.front"].shape == (3, 4, 5)
    np.testing.assert_array_equal(obs["observation.images.front"][1], rgb[:, :, 1])
    assert obs["observation.images.front_depth"].shape == (1, 4, 5)
    assert obs["observation.images.front_depth"].dtype == np.uint16
    assert "observation.images.other" not in obs and obs["task"] == "task"


def test_an_unavailable_policy_holds_the_arm_and_is_asked_again():
    from rlbench_sms.runtime.inference import PolicyUnavailable

    class FlakyPolicy(CountingPolicy):
        def __init__(self, *a, away_for: int = 3, **kw):
            super().__init__(*a, **kw)
            self.away_for = away_for

        def infer(self, observation):
            if self.away_for:
                self.away_for -= 1
                raise PolicyUnavailable("server away, reconnecting")
            return super().infer(observation)

    for mode in ("sync", "async"):
        runner = PolicyRunner(FlakyPolicy(contract()), RunnerConfig(mode=mode, sim_latency_ms=0), fps=FPS,
                              simulated=True, warmup=False)
        sent = run(runner, 10)
        assert all(np.array_equal(a, np.zeros(6)) for a in sent[:3])      # held still, no stale chunk
        assert [a[0] for a in sent[3:]] == list(range(3, 10))              # asked again at tick 3
        assert runner.end_episode()["inference/unavailable_ticks"] == 3


def test_connect_warms_the_policy_up_on_a_blank_observation_outside_the_figures():
    policy = CountingPolicy(contract(force_window=3), infer_ms=500.0)
    runner = PolicyRunner(policy, RunnerConfig(mode="sync", sim_latency_ms=0), fps=FPS, simulated=True)
    runner.connect()
    (warm,) = policy.observations
    assert warm["task"] == "warm-up" and warm[FORCE].shape == (3, 6) and not warm[STATE].any()
    run(runner, 2)
    assert runner.end_episode()["inference/chunks"] == 1 and runner.latencies_ms == [500.0]

    class Broken(CountingPolicy):
        def infer(self, observation):
            raise InferenceError("export is broken")

    with pytest.raises(InferenceError, match="broken"):
        PolicyRunner(Broken(contract()), fps=FPS, simulated=True).connect()


def test_observations_carry_the_actions_executed_so_far():
    policy = CountingPolicy(contract())
    runner = PolicyRunner(policy, RunnerConfig(mode="sync", sim_latency_ms=300), fps=FPS, simulated=True,
                          warmup=False)
    run(runner, 2 * (CHUNK + 9))
    # Asked at tick 0 and at tick 59 (after 9 ticks of waiting and 50 actions): timestep 0 then 50.
    assert [o["timestep"] for o in policy.observations] == [0, 50]


def test_a_replay_serves_the_recording_from_where_the_runner_is(small_sample):
    from rlbench_sms.data.reader import DatasetReader
    from rlbench_sms.runtime.replay_policy import ReplayPolicy

    with DatasetReader(small_sample) as reader:
        columns = reader.load_columns([ACTION, "episode_index"])
    recorded = columns[ACTION][columns["episode_index"] == 1]
    replay = ReplayPolicy(small_sample, chunk_size=8)
    for mode, latency in (("sync", 0), ("sync", 100), ("async", 100)):
        runner = PolicyRunner(replay, RunnerConfig(mode=mode, sim_latency_ms=latency), fps=FPS, simulated=True)
        sent = np.array([a for a in run(runner, len(recorded), episode=1) if a is not None])
        executed = sent[runner.stats["empty_queue_ticks"]:] if mode == "async" else sent
        if mode == "sync" and latency:
            # Each chunk: 3 ticks standing still (the last action held), then its 8 recorded actions.
            expected, held, step = [], np.zeros(6, np.float32), 0
            while len(expected) < len(sent):
                expected += [held] * 3 + list(recorded[step: step + 8])
                step += 8
                held = expected[-1]
            np.testing.assert_array_equal(sent, np.array(expected[: len(sent)]))
        elif mode == "sync":
            np.testing.assert_array_equal(executed, recorded)
        else:
            # After the first chunk's latency (3 ticks) it runs the recording without a gap (overlapping
            # chunks agree; their weighted average only rounds).
            np.testing.assert_allclose(executed, recorded[3: 3 + len(executed)], rtol=0, atol=1e-4)
    with pytest.raises(InferenceError, match="no recorded episode 99"):
        replay.reset(99)
