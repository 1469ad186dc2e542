"""Policy serving: the wire (never pickle), the server's protocol and faults, the torch-free client,
remote == local actions, and evaluate.py against a loopback server.

Servers run in a background thread of this process (``ServerThread``, a free port), except where a
test needs a second process (the CLI, the torch-free client). Waits are on conditions, never sleeps.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rlbench_sms.features import ACTION, FORCE, STATE, FeatureSpec, depth_key, image_key, joint_feature
from rlbench_sms.runtime.contract import PolicyContract
from rlbench_sms.runtime.inference import ActionChunk, InferenceError, PolicyUnavailable
from rlbench_sms.serving import protocol, wire
from rlbench_sms.serving.client import FRAGMENT_BYTES, RemotePolicy, ServerRefused
from rlbench_sms.serving.images import ImageShrinker, fitted_size, resize_bilinear, shrink_images
from rlbench_sms.serving.server import PolicyServer, ServerConfig, ServerThread, torch_noise

REPO = Path(__file__).resolve().parents[1]
CHUNK, ACTION_DIM = 4, 6
WAIT_S = 20.0                 # the longest any condition below is waited for (a loaded CI machine)


# ------------------------------------------------------------------------- a stub policy
def stub_contract(image_size=(64, 64)) -> PolicyContract:
    inputs = {STATE: joint_feature(STATE), image_key("front"): FeatureSpec(image_key("front"), "video", (48, 64, 3))}
    return PolicyContract(inputs, joint_feature(ACTION), 30, CHUNK, CHUNK, image_size=image_size)


class StubPolicy:
    """Answers a chunk whose values come from the session's noise (a numpy generator) plus the
    state; ``fail`` makes it raise, ``gate`` makes it wait (to hold the worker busy)."""

    def __init__(self, contract: PolicyContract | None = None):
        self.contract = contract or stub_contract()
        self.fail: str | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.seen: list[dict] = []

    def infer(self, observation, generator=None):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        if self.fail:
            raise RuntimeError(self.fail)
        self.seen.append(observation)
        draw = generator.random() if generator is not None else 0.0
        state = observation[STATE]
        return ActionChunk(np.tile(state + draw, (CHUNK, 1)).astype(np.float32), {"infer": 0.0})

    def reset(self, seed=None):
        pass

    def close(self):
        pass


def rng_noise(seed):
    return np.random.default_rng(seed)


def stub_observation(height=48, width=64, state=0.0) -> dict:
    rng = np.random.default_rng(0)
    return {"task": "pick", STATE: np.full(ACTION_DIM, state, np.float32),
            image_key("front"): rng.integers(0, 256, (3, height, width), dtype=np.uint8)}


@contextmanager
def serving(policy=None, port: int = 0, noise=rng_noise, **config):
    server = PolicyServer(policy or StubPolicy(), ServerConfig(port=port, **config), noise=noise)
    with ServerThread(server) as running:
        yield running


def wait_for(condition, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def hello(token=None) -> bytes:
    return wire.encode({"type": "hello", "protocol": protocol.PROTOCOL_VERSION, "token": token, "client": "raw"})


@contextmanager
def raw_session(address: str, token=None):
    """A bare websocket that has been welcomed: for sending bytes no client would."""
    with connect(f"ws://{address}", compression=None, max_size=None) as ws:
        ws.send(hello(token))
        assert wire.decode(ws.recv(timeout=WAIT_S), 1 << 24)["type"] == "welcome"
        yield ws


def ask(ws, payload) -> dict:
    ws.send(payload)
    return wire.decode(ws.recv(timeout=WAIT_S), 1 << 24)


def health(ws, request_id=99) -> dict:
    return ask(ws, wire.encode({"type": "health", "id": request_id}))


# ------------------------------------------------------------------------- the wire
@pytest.mark.parametrize("dtype", sorted(wire.DTYPES))
def test_every_allowed_dtype_round_trips_exactly(dtype):
    rng = np.random.default_rng(1)
    values = (rng.random((2, 3, 5)) * 1000).astype(dtype)
    for array in (values, values[:, ::2, 1:], values.astype(np.dtype(dtype).newbyteorder(">")),
                  values[0, 0, :1].reshape(()), np.zeros((0, 3), dtype)):
        out = wire.decode(wire.encode({"a": array}), 1 << 20)["a"]
        assert out.dtype == np.dtype(dtype) and out.shape == array.shape and out.flags.writeable
        np.testing.assert_array_equal(out, array)
    assert wire.decode(wire.encode({"a": values[0, 0, 0]}), 1 << 20)["a"] == values[0, 0, 0].item()   # a scalar


def test_depth_travels_as_exact_uint16_millimetres():
    depth = np.arange(0, 65536, dtype=np.uint16).reshape(1, 256, 256)
    out = wire.decode(wire.encode({depth_key("front"): depth}), 1 << 20)[depth_key("front")]
    assert out.dtype == np.uint16 and np.array_equal(out, depth)


class CreatesAFile:
    """A pickle whose *loading* would create ``path`` (what pickle-on-the-wire lets a peer do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def hostile_payloads(path) -> dict[str, bytes]:
    bomb = pickle.dumps(CreatesAFile(path))
    array = {"__ndarray__": True, "dtype": "object", "shape": [1], "data": bomb}
    return {
        "a pickle": bomb,
        "a pickle in an object array": msgpack.packb({"type": "infer", "id": 1,
                                                      "observation": {"task": "t", "x": array}}),
        "a pickle in an ext type": msgpack.packb({"type": "infer", "id": 1, "x": msgpack.ExtType(1, bomb)}),
        "a msgpack timestamp": msgpack.packb({"type": "health", "id": 1, "t": msgpack.Timestamp(1)}),
    }


def test_pickle_ext_types_and_object_dtypes_are_refused_not_loaded(tmp_path):
    target = tmp_path / "pwned"
    assert pickle.loads(pickle.dumps(CreatesAFile(tmp_path / "control"))) and (tmp_path / "control").exists()
    for what, payload in hostile_payloads(target).items():
        with pytest.raises(wire.WireError) as error:
            wire.decode(payload, 1 << 20)
        assert "\n" not in str(error.value), what
    with pytest.raises(wire.WireError, match="dtype 'object'"):
        wire.encode({"x": np.array([CreatesAFile(target)], dtype=object)})
    assert not target.exists()


@pytest.mark.parametrize("node, message", [
    ({"__ndarray__": True, "dtype": "float32", "shape": [2], "data": b"\0" * 7}, "7 data bytes"),
    ({"__ndarray__": True, "dtype": "float32", "shape": [-1], "data": b""}, "non-negative"),
    ({"__ndarray__": True, "dtype": "float32", "shape": [1] * 9, "data": b"\0" * 4}, "at most 8"),
    ({"__ndarray__": True, "dtype": "bool", "shape": [2], "data": b"\x00\x07"}, "other than 0 and 1"),
    ({"__ndarray__": True, "dtype": "<f4", "shape": [1], "data": b"\0" * 4}, "dtype '<f4'"),
    ({"__ndarray__": True, "dtype": "uint8", "shape": [1], "data": "x"}, "not raw bytes"),
    ({"__ndarray__": True, "dtype": "uint8", "shape": [1], "data": b"x", "extra": 1}, "exactly the keys"),
])
def test_a_malformed_array_is_one_line(node, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode(msgpack.packb({"a": node}), 1 << 20)


@pytest.mark.parametrize("payload, message", [
    (b"\xc1\xc1\xc1", "not a msgpack message"),
    (wire.encode({"type": "health", "id": 1})[:-2], "incomplete"),
    (msgpack.packb([1, 2]), "got a list"),
    (msgpack.packb({1: 2}), "map key"),
    (msgpack.packb({b"type": 2}), "must be str"),
    (wire.encode({"a": 1}) + b"\x00", "trailing bytes"),
    (b"x" * 2000, "over the limit"),
])
def test_garbage_is_a_wire_error_of_one_line(payload, message):
    with pytest.raises(wire.WireError, match=message) as error:
        wire.decode(payload, 1000)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------- the client's resize
@pytest.mark.parametrize("shape, size", [((480, 640), (512, 512)), ((96, 128), (64, 64)), ((37, 91), (64, 64)),
                                         ((480, 640), (64, 64))])
def test_the_client_resize_is_the_policys_resize_up_to_rounding(shape, size):
    import torch

    from rlbench_sms.policy.smolvla.preprocess import resize_with_pad

    image = np.random.default_rng(2).integers(0, 256, (3, *shape), dtype=np.uint8)
    height, width = fitted_size(*shape, size)
    shrunk = resize_bilinear(image, height, width)
    on_server = resize_with_pad(torch.from_numpy(image[None]).float() / 255, size[1], size[0])
    after_client = resize_with_pad(torch.from_numpy(shrunk[None]).float() / 255, size[1], size[0])
    assert after_client.shape == on_server.shape
    # Rounding the resized frame to uint8 is the only difference: at most half a grey level.
    assert float((after_client - on_server).abs().max()) <= 0.5 / 255 + 1e-6


def test_each_camera_keeps_its_own_frame_when_two_share_a_size():
    inputs = {STATE: joint_feature(STATE), **{image_key(c): FeatureSpec(image_key(c), "video", (48, 64, 3))
                                              for c in ("front", "wrist")}}
    contract = PolicyContract(inputs, joint_feature(ACTION), 30, CHUNK, CHUNK, image_size=(64, 64))
    rng = np.random.default_rng(4)
    obs = {image_key(c): rng.integers(0, 256, (3, 96, 128), dtype=np.uint8) for c in ("front", "wrist")}
    shrink = ImageShrinker(contract, (64, 64))
    for _ in range(2):                    # its buffers are reused from call to call
        out = shrink(obs)
        for camera in ("front", "wrist"):
            np.testing.assert_array_equal(out[image_key(camera)], resize_bilinear(obs[image_key(camera)], 48, 64))


def test_the_reused_encoder_gives_the_bytes_of_encode():
    encoder = wire.Encoder()
    for message in ({"a": np.arange(10_000, dtype=np.float32)}, {"b": 1}, stub_observation()):
        with encoder.encoded(message) as view:
            assert bytes(view) == wire.encode(message)
    with pytest.raises(wire.WireError, match="cannot be sent"):
        with encoder.encoded({"x": object()}):
            pass
    with encoder.encoded({"c": 2}) as view:          # usable after a refused message
        assert wire.decode(view, 100) == {"c": 2}


def test_only_rgb_frames_the_policy_reads_are_shrunk():
    obs = stub_observation(96, 128)
    obs[depth_key("front")] = np.ones((1, 96, 128), np.uint16)
    out = shrink_images(obs, stub_contract(), (64, 64))
    assert out[image_key("front")].shape == (3, 48, 64)
    assert out[depth_key("front")] is obs[depth_key("front")]            # depth as it is
    small = stub_observation(24, 32)                                       # below the size: as it is
    assert shrink_images(small, stub_contract(), (64, 64))[image_key("front")] is small[image_key("front")]


# ------------------------------------------------------------------------- handshake, token, health
def test_the_handshake_gives_the_contract_and_health_answers():
    stub = StubPolicy()
    with serving(stub) as running:
        client = RemotePolicy(running.address, client_name="robot-1")
        try:
            assert client.contract == stub.contract
            welcome = client.welcome
            assert (welcome["fps"], welcome["chunk_size"], welcome["image_size"]) == (30, CHUNK, [64, 64])
            assert welcome["version"] and welcome["protocol"] == protocol.PROTOCOL_VERSION
            status = client.health()
            assert status["status"] == "ok" and status["sessions"] == 1 and status["served"] == 0
            chunk = client.infer(stub_observation(state=2.0))
            assert chunk.actions.shape == (CHUNK, ACTION_DIM) and chunk.actions.dtype == np.float32
            assert {"decode", "queue", "infer", "encode", "client_encode", "round_trip"} <= set(chunk.timing_ms)
            assert chunk.timing_ms["round_trip"] >= chunk.timing_ms["infer"]
            assert next(iter(running.server.sessions.values())).client == "robot-1"
        finally:
            client.close()


def test_a_token_is_required_when_the_server_has_one():
    with serving(token="s3cret") as running:
        for token in (None, "guess"):
            with pytest.raises(ServerRefused, match="a valid token is required"):
                RemotePolicy(running.address, token)
        # A refused peer learns nothing about the policy, and is closed with 1008.
        with connect(f"ws://{running.address}", compression=None) as ws:
            ws.send(hello("guess"))
            reply = wire.decode(ws.recv(timeout=WAIT_S), 1 << 20)
            assert reply["type"] == "error" and "contract" not in reply
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=WAIT_S)
            assert closed.value.rcvd.code == protocol.CLOSE_POLICY_VIOLATION
        assert running.server.sessions == {}
        client = RemotePolicy(running.address, "s3cret")
        assert client.infer(stub_observation()).actions.shape == (CHUNK, ACTION_DIM)
        client.close()


def test_a_first_message_that_is_not_a_hello_is_refused_and_closed(tmp_path):
    with serving() as running:
        first_messages = [wire.encode({"type": "infer", "id": 1}), b"\x80garbage",
                          *hostile_payloads(tmp_path / "x").values()]
        for payload in first_messages:
            with connect(f"ws://{running.address}", compression=None) as ws:
                ws.send(payload)
                reply = wire.decode(ws.recv(timeout=WAIT_S), 1 << 20)
                assert reply["type"] == "error" and reply["message"].startswith("handshake:")
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=WAIT_S)
        assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------- sessions
def test_each_client_has_its_own_session_and_noise():
    with serving() as running:
        first = RemotePolicy(running.address)
        first.reset(5)
        a1 = first.infer(stub_observation()).actions
        second = RemotePolicy(running.address)        # another peer's handshake and reset must not
        try:                                          # touch the first client's session
            second.reset(7)
            second.infer(stub_observation())
            a2 = first.infer(stub_observation()).actions
            expected = np.random.default_rng(5)
            assert a1[0, 0] == np.float32(expected.random()) and a2[0, 0] == np.float32(expected.random())
            seeds = sorted(s.seed for s in running.server.sessions.values())
            assert seeds == [5, 7] and first.health()["sessions"] == 2
        finally:
            first.close()
            second.close()


def test_a_dropped_client_frees_its_session():
    with serving() as running:
        watcher, leaver, quitter = (RemotePolicy(running.address) for _ in range(3))
        assert watcher.health()["sessions"] == 3
        leaver._connection.socket.close()             # gone without a close handshake
        wait_for(lambda: watcher.health()["sessions"] == 2, "the dropped session to be freed")
        quitter.close()
        wait_for(lambda: watcher.health()["sessions"] == 1, "the closed session to be freed")
        watcher.close()


# ------------------------------------------------------------------------- faults
def test_a_policy_exception_is_an_error_reply_carrying_its_message():
    stub = StubPolicy()
    with serving(stub) as running:
        client = RemotePolicy(running.address)
        stub.fail = "the wrist camera is black"
        with pytest.raises(InferenceError, match="RuntimeError: the wrist camera is black") as error:
            client.infer(stub_observation())
        assert not isinstance(error.value, PolicyUnavailable) and "\n" not in str(error.value)
        with raw_session(running.address) as ws:
            reply = ask(ws, wire.encode({"type": "infer", "id": 41, "observation": stub_observation()}))
            assert reply == {"type": "error", "id": 41, "message": "RuntimeError: the wrist camera is black"}
        stub.fail = None                              # the same connection goes on
        assert client.infer(stub_observation()).actions.shape == (CHUNK, ACTION_DIM)
        client.close()


MALFORMED = {
    "garbage bytes": (b"\xc1\xff\x00garbage", None, "not a msgpack message"),
    "truncated": (wire.encode({"type": "infer", "id": 3, "observation": stub_observation()})[:-100], None,
                  "incomplete"),
    "a text frame": ("hello", None, "text frames"),
    "a list": (msgpack.packb([1, 2, 3]), None, "got a list"),
    "no id": (wire.encode({"type": "health"}), None, "int 'id'"),
    "an unknown type": (wire.encode({"type": "fly", "id": 4}), 4, "unknown request type 'fly'"),
    "a second hello": (wire.encode({"type": "hello", "id": 5}), 5, "already been welcomed"),
    "a str seed": (wire.encode({"type": "reset", "id": 6, "seed": "seven"}), 6, "'seed' must be an int"),
    "no observation": (wire.encode({"type": "infer", "id": 7}), 7, "'observation' must be a map"),
    "no task": (wire.encode({"type": "infer", "id": 8, "observation": {STATE: np.zeros(6, np.float32)}}), 8,
                "'task' string"),
    "a str for an array": (wire.encode({"type": "infer", "id": 9, "observation": {"task": "t", STATE: "zeros"}}), 9,
                           "must be an array or a number"),
    "a short array": (msgpack.packb({"type": "infer", "id": 10, "observation": {
        "task": "t", STATE: {"__ndarray__": True, "dtype": "float32", "shape": [6], "data": b"\0" * 5}}}), 10,
        "5 data bytes"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_message_gets_an_error_reply_and_the_server_goes_on(name):
    payload, request_id, message = MALFORMED[name]
    with serving() as running:
        bystander = RemotePolicy(running.address)
        with raw_session(running.address) as ws:
            reply = ask(ws, payload)
            assert reply["type"] == "error" and reply["id"] == request_id and message in reply["message"], reply
            assert "\n" not in reply["message"]
            assert health(ws)["status"] == "ok"       # the same connection is still served
        assert bystander.infer(stub_observation()).actions.shape == (CHUNK, ACTION_DIM)
        bystander.close()


def test_an_oversized_message_is_closed_with_a_reason_and_others_are_served():
    limit_mb = 0.02                                   # ~20 kB: a 48x64 frame fits, a 480x640 one does not
    with serving(max_message_mb=limit_mb) as running:
        bystander = RemotePolicy(running.address, resize_images=False)
        for message in (b"\0" * 100_000, (b"\0" * 8_000 for _ in range(12))):     # whole, or in fragments
            with raw_session(running.address) as ws:
                # The server closes as soon as the limit is passed: while the fragments are still
                # being sent (the send raises) or after (the next receive does).
                with pytest.raises(ConnectionClosed) as closed:
                    ws.send(message)
                    ws.recv(timeout=WAIT_S)
            assert closed.value.rcvd.code == 1009 and "exceeds" in closed.value.rcvd.reason
        # The client checks the server's limit before sending: one line, nothing sent.
        with pytest.raises(InferenceError, match="over the server's max_message_mb"):
            bystander.infer(stub_observation(480, 640))
        assert bystander.infer(stub_observation()).actions.shape == (CHUNK, ACTION_DIM)
        bystander.close()


def test_pickle_sent_to_the_server_is_refused_not_loaded(tmp_path):
    target = tmp_path / "pwned"
    with serving() as running:
        with raw_session(running.address) as ws:
            for what, payload in hostile_payloads(target).items():
                reply = ask(ws, payload)
                assert reply["type"] == "error", what
            assert health(ws)["status"] == "ok"
    assert not target.exists()


def test_inference_runs_off_the_event_loop():
    """While one client's chunk is computed, another's health check is answered."""
    stub = StubPolicy()
    stub.gate = threading.Event()
    with serving(stub) as running:
        slow, other = RemotePolicy(running.address), RemotePolicy(running.address)
        result = {}
        worker = threading.Thread(target=lambda: result.update(chunk=slow.infer(stub_observation())))
        worker.start()
        try:
            assert stub.entered.wait(WAIT_S)
            assert other.health()["busy"] is True      # answered while the policy is busy
        finally:
            stub.gate.set()
            worker.join(WAIT_S)
        assert result["chunk"].actions.shape == (CHUNK, ACTION_DIM)
        slow.close()
        other.close()


def test_eight_concurrent_clients_are_all_served():
    with serving() as running:
        clients = [RemotePolicy(running.address) for _ in range(8)]
        errors, chunks = [], []

        def work(client, value):
            try:
                for _ in range(5):
                    chunk = client.infer(stub_observation(state=value))
                    chunks.append(bool(np.all(np.floor(chunk.actions) == value)))   # its own reply
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(c, float(10 * i))) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert not errors and len(chunks) == 40 and all(chunks)
        assert running.server.served == 40
        for client in clients:
            client.close()


# ------------------------------------------------------------------------- reconnecting
def test_the_client_survives_a_server_restart():
    stub = StubPolicy()
    with serving(stub) as running:
        port = running.port
        client = RemotePolicy(running.address, backoff_s=0.02, max_backoff_s=0.1, connect_timeout_s=1.0)
        client.reset(11)
        first = client.infer(stub_observation()).actions
    # The server is gone: bounded calls that say so, never a hang or a stale chunk.
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises(PolicyUnavailable):
            client.infer(stub_observation())
        assert time.monotonic() - start < 2.0
    with serving(stub, port=port) as running:
        chunk = wait_for(lambda: _try_infer(client), "the client to reconnect")
        session = next(iter(running.server.sessions.values()))
        assert session.seed == 11                       # re-handshake, then reset with the episode's seed
        np.testing.assert_array_equal(chunk.actions, first)      # the seed's noise from its start again
        client.close()


def test_an_episode_holds_the_arm_while_the_server_restarts():
    """The runner with a remote policy: while the server is away the arm holds its last action
    (no stale chunk, no failure); once it is back the episode goes on from new chunks."""
    from rlbench_sms.runtime.policy_runner import PolicyRunner, RunnerConfig

    stub = StubPolicy()
    frame = {STATE: np.full(ACTION_DIM, 1.0, np.float32), image_key("front"): np.zeros((48, 64, 3), np.uint8)}
    with serving(stub) as running:
        port = running.port
        client = RemotePolicy(running.address, backoff_s=0.02, max_backoff_s=0.1, connect_timeout_s=1.0)
        runner = PolicyRunner(client, RunnerConfig(mode="sync", sim_latency_ms=0), fps=30, simulated=True)
        runner.connect()
        runner.start_episode(0)
        sent = [runner.next_action(frame, "pick") for _ in range(2 * CHUNK)]      # two whole chunks
    held = [runner.next_action(frame, "pick") for _ in range(5)]
    assert all(np.array_equal(action, sent[-1]) for action in held)             # held still
    with serving(stub, port=port):
        wait_for(lambda: not np.array_equal(runner.next_action(frame, "pick"), sent[-1]), "a new chunk")
    stats = runner.end_episode()
    assert stats["inference/unavailable_ticks"] >= 5 and stats["inference/chunks"] == 3
    client.close()


def _try_infer(client):
    try:
        return client.infer(stub_observation())
    except PolicyUnavailable:
        return None


def test_a_server_that_is_not_there_is_one_line_at_construction():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                       # nothing listens here once closed
    with pytest.raises(InferenceError, match=f"policy server 127.0.0.1:{port}: cannot connect") as error:
        RemotePolicy(f"127.0.0.1:{port}", connect_timeout_s=1.0)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="expected host:port"):
        RemotePolicy("gpu-box")


def test_a_server_restarted_with_another_policy_is_refused():
    with serving(StubPolicy()) as running:
        port = running.port
        client = RemotePolicy(running.address, backoff_s=0.02)
        client.infer(stub_observation())
    with serving(StubPolicy(stub_contract(image_size=(32, 32))), port=port):
        with pytest.raises(ServerRefused, match="came back serving another policy"):
            wait_for(lambda: _try_infer(client), "the client to reconnect")


# ------------------------------------------------------------------------- the real policy
DEPTH_FORCE = {"depth": {"type": "cnn", "input_size": [16, 16], "channels": [8, 16], "grid": [1, 2]},
               "force": {"type": "mlp", "window": 3, "hidden_dim": 16, "n_tokens": 1}}


@pytest.fixture(scope="module")
def exported(small_sample, tiny_vlm_dir, tmp_path_factory):
    """A tiny random rgb+depth+force policy over the twin sample (48x64 cameras, 64x64 input)."""
    from policy_factory import make_export

    return make_export(tmp_path_factory.mktemp("export") / "best", small_sample, tiny_vlm_dir,
                       modality="rgb+depth+force", branches=DEPTH_FORCE)


@pytest.fixture(scope="module")
def local(exported):
    from rlbench_sms.runtime.local_policy import LocalPolicy

    return LocalPolicy(exported, device="cpu")


@pytest.fixture(scope="module")
def policy_server(exported):
    from rlbench_sms.runtime.local_policy import LocalPolicy

    with serving(LocalPolicy(exported, device="cpu"), noise=torch_noise) as running:
        yield running


def real_observation(contract: PolicyContract, scale: int = 1, seed: int = 0) -> dict:
    """An observation as ObservationBuilder gives it, at ``scale`` x the trained camera size."""
    rng = np.random.default_rng(seed)
    obs = {"task": "pick the cube", STATE: rng.normal(size=6).astype(np.float32)}
    for camera in contract.cameras:
        height, width = (n * scale for n in contract.inputs[image_key(camera)].shape[:2])
        obs[image_key(camera)] = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    for camera in contract.depth_cameras:
        height, width = (n * scale for n in contract.inputs[depth_key(camera)].shape[:2])
        obs[depth_key(camera)] = rng.integers(200, 2000, (1, height, width), dtype=np.uint16)
    window = contract.force_window
    obs[FORCE] = rng.normal(size=(window, contract.force_channels)).astype(np.float32)
    obs[FORCE + "_is_pad"] = np.array([True] + [False] * (window - 1))
    return obs


def local_chunks(local, obs, seed, n):
    local.reset(seed)
    return [local.infer(obs).actions for _ in range(n)]


def test_remote_actions_equal_local_ones(local, policy_server):
    client = RemotePolicy(policy_server.address)
    try:
        assert client.contract == local.contract
        # At the trained size the fitted size is the frame's own (48x64 into 64x64): nothing is
        # resized, and the actions are bit-identical, chunk after chunk, for the same seed.
        obs = real_observation(local.contract)
        client.reset(3)
        remote = [client.infer(obs).actions for _ in range(2)]
        for got, want in zip(remote, local_chunks(local, obs, 3, 2)):
            np.testing.assert_array_equal(got, want)
        # A camera at 4x the size: the client shrinks it to 48x64 before sending. The only
        # difference from resizing on the server is uint8 rounding (<= half a grey level).
        big = real_observation(local.contract, scale=4)
        client.reset(3)
        shrunk = client.infer(big).actions
        (want,) = local_chunks(local, big, 3, 1)
        difference = float(np.abs(shrunk - want).max())
        assert difference < 1e-2 * max(1.0, float(np.abs(want).max())), difference
        print(f"client-side resize: max |remote - local| = {difference:.2e} (actions up to "
              f"{float(np.abs(want).max()):.1f})")
        # Sent at full size (over 200 kB: several websocket fragments), the actions are exact.
        full = RemotePolicy(policy_server.address, resize_images=False)
        assert len(wire.encode(big)) > 3 * FRAGMENT_BYTES
        full.reset(3)
        np.testing.assert_array_equal(full.infer(big).actions, want)
        full.close()
    finally:
        client.close()


def test_a_policy_failure_on_the_server_reaches_the_client_with_its_message(local, policy_server):
    client = RemotePolicy(policy_server.address)
    obs = real_observation(local.contract)
    del obs[depth_key(local.contract.depth_cameras[0])]
    with pytest.raises(InferenceError, match="inference failed") as error:
        client.infer(obs)
    assert "\n" not in str(error.value) and "depth" in str(error.value)
    assert client.infer(real_observation(local.contract)).actions.shape[1] == ACTION_DIM
    client.close()


TORCH_FREE_CLIENT = r"""
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"the robot side imported {name}")

sys.meta_path.insert(0, NoTorch())
import numpy as np
from rlbench_sms.serving.client import RemotePolicy

client = RemotePolicy(sys.argv[1], sys.argv[2])
contract = client.contract
obs = {"task": "pick the cube", "observation.state": np.zeros(6, np.float32)}
for cam in contract.cameras:
    obs[f"observation.images.{cam}"] = np.zeros((3, 480, 640), np.uint8)
for cam in contract.depth_cameras:
    obs[f"observation.images.{cam}_depth"] = np.full((1, 480, 640), 700, np.uint16)
w = contract.force_window
obs["observation.force"] = np.zeros((w, contract.force_channels), np.float32)
obs["observation.force_is_pad"] = np.zeros(w, bool)
client.reset(0)
chunk = client.infer(obs)
client.close()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "lightning", "pytorch_lightning"))
print(json.dumps({"shape": list(chunk.actions.shape), "heavy": heavy}))
"""


def test_the_cli_server_and_a_torch_free_client_in_other_processes(exported, tmp_path):
    """The robot side never imports torch: a client process (torch imports blocked) does a round
    trip with ``python -m rlbench_sms.serving.server`` running in a third process."""
    server = subprocess.Popen([sys.executable, "-m", "rlbench_sms.serving.server", f"policy_path={exported}",
                               "port=0", "token=abc", "device=cpu", "num_threads=1", f"hydra.run.dir={tmp_path}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        ready = line.startswith(f"serving {exported} on ws://127.0.0.1:") and line.rstrip().endswith("(token required)")
        assert ready, line + (server.stderr.read() if server.poll() is not None else "")
        address = line.split("ws://", 1)[1].split()[0]
        run = subprocess.run([sys.executable, "-c", TORCH_FREE_CLIENT, address, "abc"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["heavy"] == [] and result["shape"][1] == ACTION_DIM
        server.send_signal(signal.SIGINT)              # Ctrl-C: one line, the shell's code
        _, err = server.communicate(timeout=60)
        assert server.returncode == 130 and err.strip().splitlines()[-1] == "serving stopped (Ctrl-C)", err
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)


def test_the_server_cli_errors_are_one_line(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "rlbench_sms.serving.server", f"hydra.run.dir={tmp_path}"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "policy_path is required" in missing.stderr
    assert missing.stderr.count("\n") == 1, missing.stderr
    bad = subprocess.run([sys.executable, "-m", "rlbench_sms.serving.server", f"policy_path={tmp_path / 'nope'}",
                          f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no such policy directory" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


# ------------------------------------------------------------------------- evaluate.py, remote
SIM_SIZE = ["sim.width=64", "sim.height=48", "sim.wrist_width=64", "sim.wrist_height=48"]


def evaluate_actions(policy: Path, run_dir: Path, cache: Path, *overrides: str) -> tuple[dict, np.ndarray]:
    from hydra import compose, initialize_config_dir

    from rlbench_sms.data.reader import DatasetReader
    from rlbench_sms.runtime.evaluation import evaluate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"policy_path={policy}", f"run_dir={run_dir}", f"sim.cache_dir={cache}",
                                             "episodes=1", "episode_time_s=0.5", "inference.sim_latency_ms=100",
                                             *SIM_SIZE, *overrides])
    assert evaluate(cfg) == 0
    with DatasetReader(run_dir / "dataset") as reader:
        actions = reader.load_columns([ACTION])[ACTION]
    return json.loads((run_dir / "eval.json").read_text()), actions


@pytest.mark.parametrize("mode", ["remote", "async"])
def test_evaluate_against_a_policy_server_gives_the_local_episode(exported, policy_server, tmp_path, mode):
    """In the twin, with the same seed and latency, a served policy drives the arm exactly as the
    same policy in this process (``server=`` at the top level reaches ``inference.server``)."""
    local_mode = "local" if mode == "remote" else "async"
    cache = tmp_path / "cache"
    remote, remote_actions = evaluate_actions(exported, tmp_path / "remote", cache, f"inference={mode}",
                                              f"++server={policy_server.address}")
    here, local_actions = evaluate_actions(exported, tmp_path / "local", cache, f"inference={local_mode}",
                                           "inference.device=cpu")
    assert remote["inference_config"]["server"] == policy_server.address
    assert remote["episodes"][0]["chunks"] == here["episodes"][0]["chunks"] > 0
    np.testing.assert_array_equal(remote_actions, local_actions)
    assert np.ptp(remote_actions, axis=0).max() > 0


def test_evaluate_with_inference_remote_and_no_server_is_one_line(exported, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from rlbench_sms.runtime.evaluation import evaluate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"policy_path={exported}", f"run_dir={tmp_path / 'run'}",
                                             f"sim.cache_dir={tmp_path / 'cache'}", "inference=remote", *SIM_SIZE])
    assert evaluate(cfg) == 1
    err = capsys.readouterr().err
    assert "inference=remote needs the policy server's address: server=gpu-box:8765" in err and err.count("\n") == 1
