"""Policy-serving transport: round trip minus server inference, over loopback. Prints ONE JSON line.

One observation as a rig gives it: 2 RGB 480x640 (uint8) + 1 depth 480x640 (uint16 mm) + state
(6) + a force window (10 x 6) and its pad flags. A :class:`RemotePolicy` sends it to a
:class:`PolicyServer` in another process (as in use: no GIL shared) and the transport overhead of
each request is ``round_trip - infer`` (client resize + encode + send + server decode + worker
hand-off + encode + receive + decode):

- ``stub_full_size``: a stub policy whose infer takes 0 ms and whose contract has no input size,
  so frames travel at 480x640 (the wire alone; the LeRobot baseline sends its frames full size too);
- ``stub_resized``: the same stub declaring SmolVLA's 512x512 input: the client shrinks each RGB
  frame to 384x512 before sending (fewer bytes, a numpy resize on the robot side);
- ``tiny_policy``: the tiny random SmolVLA (tests' size, CPU) behind the server: the overhead next
  to a real inference, and the largest action difference between sending the frames resized by
  the client and at full size (same seed);
- ``concurrent``: 8 clients at once against the stub (errors must be 0);
- ``tcp_floor``: the same number of bytes over a plain TCP socket to another process and one byte
  back: what any transport pays on this machine under its present load (``load_average_1m``).

Baseline: LeRobot 0.4.4's async inference (gRPC + pickle) measured on this machine for 2 RGB
480x640 + state: p50 25.7 ms, p99 40.2 ms, 1.84 MB per observation. Goal: p50 <= 5 ms, p99 <= 15 ms.

    python benchmarks/serving.py [--iters 300] [--tiny-iters 20] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlbench_sms.features import (ACTION, FORCE, PAD_SUFFIX, STATE, FeatureSpec, depth_key, force_feature,  # noqa: E402
                                  image_key, joint_feature)
from rlbench_sms.runtime.contract import PolicyContract  # noqa: E402
from rlbench_sms.runtime.inference import ActionChunk  # noqa: E402
from rlbench_sms.serving import wire  # noqa: E402
from rlbench_sms.serving.client import RemotePolicy  # noqa: E402
from rlbench_sms.serving.images import shrink_images  # noqa: E402
from rlbench_sms.serving.server import PolicyServer, ServerConfig, torch_noise  # noqa: E402

CAMERAS = ("front", "wrist")
HEIGHT, WIDTH = 480, 640
FORCE_WINDOW, FORCE_CHANNELS = 10, 6
CHUNK = 50
SMOLVLA_INPUT = (512, 512)          # (width, height): SmolVLA's resize_imgs_with_padding
GOAL = {"p50_ms": 5.0, "p99_ms": 15.0}
SERVER_START_TIMEOUT_S = 120         # the tiny policy's server builds its VLM first
TINY_TIMEOUT_S = 60                  # one tiny-policy chunk on a loaded CPU
BASELINE = {"system": "LeRobot 0.4.4 async inference (gRPC + pickle)", "observation": "2 RGB 480x640 + state",
            "p50_ms": 25.7, "p99_ms": 40.2, "bytes_per_observation": 1_840_000, "measured": "on this machine"}


def contract(image_size) -> PolicyContract:
    inputs = {STATE: joint_feature(STATE), FORCE: force_feature([f"f{i}" for i in range(FORCE_CHANNELS)])}
    for camera in CAMERAS:
        inputs[image_key(camera)] = FeatureSpec(image_key(camera), "video", (HEIGHT, WIDTH, 3))
    inputs[depth_key("front")] = FeatureSpec(depth_key("front"), "video", (HEIGHT, WIDTH, 1))
    return PolicyContract(inputs, joint_feature(ACTION), 30, CHUNK, CHUNK, FORCE_WINDOW, "rgb+depth+force",
                          image_size=image_size)


def observation(seed: int = 0) -> dict:
    """What ObservationBuilder gives for the rig above (random content: nothing compresses)."""
    rng = np.random.default_rng(seed)
    obs = {"task": "pick up the red cube and place it in the bowl", STATE: rng.normal(size=6).astype(np.float32),
           FORCE: rng.normal(size=(FORCE_WINDOW, FORCE_CHANNELS)).astype(np.float32),
           FORCE + PAD_SUFFIX: np.zeros(FORCE_WINDOW, bool), "timestep": 0}
    for camera in CAMERAS:
        obs[image_key(camera)] = rng.integers(0, 256, (3, HEIGHT, WIDTH), dtype=np.uint8)
    obs[depth_key("front")] = rng.integers(300, 3000, (1, HEIGHT, WIDTH), dtype=np.uint16)
    return obs


class ZeroMsPolicy:
    """Answers a fixed chunk at once: what is left of a round trip is the transport."""

    def __init__(self, image_size):
        self.contract = contract(image_size)
        self.actions = np.zeros((CHUNK, 6), np.float32)

    def infer(self, observation, generator=None) -> ActionChunk:
        return ActionChunk(self.actions, {"infer": 0.0})

    def reset(self, seed=None):
        pass

    def close(self):
        pass


class TinySmolVLA:
    """The tiny random SmolVLA on CPU behind the serving interface (per-session noise)."""

    def __init__(self, workdir: Path):
        import torch

        from rlbench_sms.policy.smolvla import SmolVLAPolicy, build_tiny_vlm, tiny_config

        torch.manual_seed(0)
        stats = {k: {"mean": torch.zeros(6), "std": torch.ones(6)} for k in (STATE, ACTION)}
        self.policy = SmolVLAPolicy(tiny_config(build_tiny_vlm(workdir / "tiny_vlm"), cameras=CAMERAS),
                                    dataset_stats=stats).eval()
        self.torch = torch
        self.contract = contract(tuple(self.policy.config.resize_imgs_with_padding))
        config = self.policy.config
        self.noise_shape = (1, config.chunk_size, config.max_action_dim)

    def infer(self, observation, generator=None) -> ActionChunk:
        with self.torch.inference_mode():
            noise = self.torch.randn(self.noise_shape, generator=generator)
            actions = self.policy.predict_action_chunk(dict(observation), noise=noise)
        return ActionChunk(actions[0].float().numpy(), {})

    def reset(self, seed=None):
        pass

    def close(self):
        pass


def percentiles(samples: list[float]) -> dict:
    values = np.asarray(samples, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3)}


def wire_bytes(client: RemotePolicy, obs: dict) -> int:
    sent = shrink_images(obs, client.contract, client.image_size) if client.resize_images else obs
    return len(wire.encode({"type": "infer", "id": 1, "observation": sent}))


def measure(client: RemotePolicy, obs: dict, iters: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        client.infer(obs)
    transport, round_trip, parts = [], [], {}
    for _ in range(iters):
        timing = client.infer(obs).timing_ms
        round_trip.append(timing["round_trip"])
        transport.append(timing["round_trip"] - timing["infer"])
        for key, value in timing.items():
            parts.setdefault(key, []).append(value)
    return {"transport": percentiles(transport), "round_trip": percentiles(round_trip),
            "parts_p50_ms": {k: round(float(np.median(v)), 3) for k, v in parts.items()},
            "bytes_per_observation": wire_bytes(client, obs), "iters": iters}


def _serve(kind: str, image_size, workdir: str, pipe) -> None:
    """In the server process: build the policy, serve on a free port, send the port back."""
    import asyncio

    if kind == "stub":
        policy, noise = ZeroMsPolicy(image_size), None
    else:
        policy, noise = TinySmolVLA(Path(workdir)), torch_noise
    server = PolicyServer(policy, ServerConfig(port=0), noise=noise)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(pipe.fileno(), stop.set)        # anything from the parent: stop
        await server.serve(stop, lambda: pipe.send((server.port, policy.contract.to_dict())))

    asyncio.run(main())
    pipe.send(server.served)


@contextmanager
def server_process(kind: str, image_size=None):
    """A policy server in its own process (as in use: no GIL shared with the client)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    with tempfile.TemporaryDirectory() as workdir:
        process = context.Process(target=_serve, args=(kind, image_size, workdir, child), daemon=True)
        process.start()
        child.close()                  # the child's end lives in the child: its exit is an EOF here
        try:
            if not parent.poll(SERVER_START_TIMEOUT_S):
                raise RuntimeError(f"the {kind} server did not start within {SERVER_START_TIMEOUT_S} s")
            port, _ = parent.recv()
        except (EOFError, RuntimeError) as error:
            process.kill()
            raise RuntimeError(f"the {kind} server process failed to start ({error or 'it exited'})") from None
        served = {}
        try:
            yield f"127.0.0.1:{port}", served
        finally:
            parent.send("stop")
            if parent.poll(SERVER_START_TIMEOUT_S):
                served["served"] = parent.recv()
            process.join(SERVER_START_TIMEOUT_S)


def stub_run(image_size, iters: int) -> dict:
    with server_process("stub", image_size) as (address, _):
        client = RemotePolicy(address)
        result = measure(client, observation(), iters)
        client.close()
    result["meets_goal"] = (result["transport"]["p50_ms"] <= GOAL["p50_ms"]
                            and result["transport"]["p99_ms"] <= GOAL["p99_ms"])
    return result


def concurrent_run(clients: int, iters: int) -> dict:
    errors: list[str] = []
    samples: list[float] = []
    lock = threading.Lock()

    def work(address: str, seed: int) -> None:
        try:
            client = RemotePolicy(address)
            obs = observation(seed)
            for _ in range(iters):
                timing = client.infer(obs).timing_ms
                with lock:
                    samples.append(timing["round_trip"] - timing["infer"])
            client.close()
        except Exception as error:  # noqa: BLE001 - counted: the figure is "no error"
            with lock:
                errors.append(f"{type(error).__name__}: {error}")

    with server_process("stub") as (address, served):
        threads = [threading.Thread(target=work, args=(address, i)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {"clients": clients, "requests": len(samples), "errors": len(errors), "first_error": errors[:1],
            "transport": percentiles(samples) if samples else None, "served": served.get("served")}


def tiny_run(iters: int) -> dict:
    with server_process("tiny") as (address, _):
        client = RemotePolicy(address, timeout_s=TINY_TIMEOUT_S)
        obs = observation()
        result = measure(client, obs, iters, warmup=2)
        full = RemotePolicy(address, timeout_s=TINY_TIMEOUT_S, resize_images=False)
        client.reset(0)
        full.reset(0)
        resized, at_full_size = client.infer(obs).actions, full.infer(obs).actions
        result["resize_max_action_difference"] = float(np.abs(resized - at_full_size).max())
        result["action_max_abs"] = float(np.abs(at_full_size).max())
        client.close()
        full.close()
    return result


def _tcp_echo(pipe) -> None:
    """In the floor's server process: read a length-prefixed payload, answer one byte."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        pipe.send(listener.getsockname()[1])
        connection, _ = listener.accept()
        with connection:
            while True:
                header = connection.recv(8, socket.MSG_WAITALL)
                if len(header) < 8:
                    return
                size = int.from_bytes(header, "little")
                buffer = memoryview(bytearray(size))
                received = 0
                while received < size:
                    got = connection.recv_into(buffer[received:])
                    if not got:
                        return
                    received += got
                connection.sendall(b"k")


def tcp_floor(size: int, iters: int) -> dict:
    """The same bytes over a plain TCP socket to another process and one byte back: what any
    transport pays on this machine, under its present load."""
    import socket
    import time

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_tcp_echo, args=(child,), daemon=True)
    process.start()
    child.close()
    port = parent.recv()
    payload = size.to_bytes(8, "little") + bytes(size)
    samples = []
    with socket.create_connection(("127.0.0.1", port)) as connection:
        for i in range(iters + 5):
            start = time.perf_counter()
            connection.sendall(payload)
            connection.recv(1)
            if i >= 5:
                samples.append((time.perf_counter() - start) * 1000.0)
    process.join(SERVER_START_TIMEOUT_S)
    return {**percentiles(samples), "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--tiny-iters", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--concurrent-iters", type=int, default=50)
    args = ap.parse_args()
    result = {"benchmark": "serving", "transport": "websockets + msgpack, loopback",
              "observation": "2 RGB 480x640 uint8 + depth 480x640 uint16 + state 6 + force 10x6",
              "goal": GOAL, "baseline": BASELINE, "cpus": os.cpu_count(),
              "load_average_1m_at_start": round(os.getloadavg()[0], 2),
              "stub_full_size": stub_run(None, args.iters),
              "stub_resized": stub_run(SMOLVLA_INPUT, args.iters),
              "concurrent": concurrent_run(args.clients, args.concurrent_iters),
              "tiny_policy": tiny_run(args.tiny_iters)}
    result["tcp_floor"] = tcp_floor(result["stub_full_size"]["bytes_per_observation"], args.iters)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
