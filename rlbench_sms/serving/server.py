"""The policy server: one policy loaded once, served to robots over websockets + msgpack.

    python -m rlbench_sms.serving.server policy_path=outputs/train/runs/<time>/policy/best port=8765 token=$TOKEN

(``conf/serve.yaml``: host, port, token, max_message_mb, device, vlm_path, num_threads.) It
prints one line when it is ready: ``serving <policy> on ws://host:port (token required)``.

The protocol is :mod:`rlbench_sms.serving.protocol` (hello -> welcome with the policy's contract,
then ``health`` / ``reset`` / ``infer`` requests, each answered by its reply or an ``error``), the
bytes :mod:`rlbench_sms.serving.wire` (msgpack, arrays as raw bytes; never pickle). What it fixes
in LeRobot's async inference:

- **Nothing is unpickled.** A peer's bytes only ever become plain data and whitelisted arrays.
- **A token** (``token=``, compared in constant time) before anything is said about the policy;
  a wrong one is an error reply and a close (1008).
- **Sessions per client.** Each connection has its own session: its own sampling noise, seeded by
  its own ``reset``. Another client's handshake or reset never touches it; a dropped connection
  frees it.
- **Errors are replies.** A policy exception comes back as an ``error`` reply carrying its
  message, never an empty reply; a garbage, truncated or wrongly typed message gets an ``error``
  reply and the connection goes on; an oversized one (over ``max_message_mb``) is refused by
  websockets with a close 1009 and its reason. Other clients are served throughout.
- **Every observation is answered** (no state-distance filter, no dropped requests): the client
  decides when to ask.

The model is not thread-safe: inference runs on one worker thread (``run_in_executor``), so the
event loop keeps answering handshakes and health checks while a chunk is computed; requests from
several clients wait their turn (``timing_ms.queue``).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import hydra
import numpy as np
from omegaconf import DictConfig
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from rlbench_sms.runtime.inference import InferencePolicy
from rlbench_sms.serving import protocol, wire
from rlbench_sms.serving.protocol import ProtocolError, Request

log = logging.getLogger(__name__)

MS_PER_S = 1000.0
BYTES_PER_MB = 1 << 20

NoiseFactory = Callable[[int | None], Any]


def package_version() -> str:
    try:
        return metadata.version("rlbench_sms")
    except metadata.PackageNotFoundError:
        return "unknown"


def torch_noise(seed: int | None) -> Any:
    """A session's sampling-noise generator for :class:`~rlbench_sms.runtime.local_policy.LocalPolicy`
    (on the CPU, as ``LocalPolicy.reset`` seeds its own: the same seed gives the same noise)."""
    import torch

    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


@dataclass
class ServerConfig:
    """``conf/serve.yaml``'s transport settings."""

    host: str = "127.0.0.1"
    port: int = 8765                  # 0: any free port (the ready line and ``port`` say which)
    token: str | None = None          # None: no token required
    max_message_mb: float = 64.0      # websockets' max_size: bigger messages are refused with 1009
    handshake_timeout_s: float = 10.0  # a connection that says no hello by then is closed
    name: str | None = None           # what the ready line and the welcome call the policy

    def __post_init__(self) -> None:
        if self.max_message_mb <= 0:
            raise ValueError(f"max_message_mb={self.max_message_mb}: must be positive")
        if self.handshake_timeout_s <= 0:
            raise ValueError(f"handshake_timeout_s={self.handshake_timeout_s}: must be positive")
        if self.token is not None and not str(self.token):
            raise ValueError("token: an empty token; use token=null for none")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * BYTES_PER_MB)


@dataclass
class Session:
    """One client's state: who it is, its seed and its own sampling noise."""

    id: str
    client: str
    peer: str
    noise: Any = None
    seed: int | None = None
    inferences: int = 0
    opened: float = field(default_factory=time.monotonic)


class PolicyServer:
    """Serves ``policy`` (an :class:`InferencePolicy`) to any number of clients.

    ``noise``: builds a session's sampling-noise source from its seed, handed to
    ``policy.infer(observation, generator=...)``; None: the policy has no per-call noise and
    ``infer(observation)`` is called as it is.
    """

    def __init__(self, policy: InferencePolicy, config: ServerConfig | None = None, *,
                 noise: NoiseFactory | None = None):
        self.policy = policy
        self.config = config or ServerConfig()
        self.noise = noise
        self.name = self.config.name or str(getattr(policy, "path", type(policy).__name__))
        self.sessions: dict[str, Session] = {}
        self.served = 0
        self.port: int | None = None
        self._busy = 0
        self._ids = itertools.count(1)
        self._started = time.monotonic()
        # One worker: the model is not thread-safe, and one chunk at a time is what a GPU does best.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-worker")

    # -- running ---------------------------------------------------------------------------------
    def ready_line(self) -> str:
        need = "token required" if self.config.token else "no token"
        return f"serving {self.name} on ws://{self.config.host}:{self.port} ({need})"

    async def serve(self, stop: asyncio.Event, ready: Callable[[], None] | None = None) -> None:
        """Serve until ``stop`` is set; ``ready`` is called once the port is listening."""
        # compression=None: images do not deflate, and deflating them costs milliseconds per frame.
        async with serve(self._handle, self.config.host, self.config.port, max_size=self.config.max_message_bytes,
                         compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            if ready is not None:
                ready()
            await stop.wait()

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    # -- one connection --------------------------------------------------------------------------
    async def _handle(self, connection: ServerConnection) -> None:
        session = await self._welcome(connection)
        if session is None:
            return
        self.sessions[session.id] = session
        log.info("session %s opened for %s (%s)", session.id, session.client, session.peer)
        try:
            async for message in connection:
                await connection.send(await self._answer(session, message))
        except ConnectionClosed:
            pass
        finally:
            # A dropped client frees its session: nothing of it outlives the connection.
            self.sessions.pop(session.id, None)
            log.info("session %s closed (%d served)", session.id, session.inferences)

    async def _refuse(self, connection: ServerConnection, message: str, code: int) -> None:
        try:
            await connection.send(wire.encode(protocol.error_reply(None, message)))
            await connection.close(code, message[:120])       # a close reason is at most 123 bytes
        except ConnectionClosed:
            pass

    async def _welcome(self, connection: ServerConnection) -> Session | None:
        """The handshake: a hello with the right protocol and token gets the contract."""
        peer = "%s:%s" % tuple(connection.remote_address[:2]) if connection.remote_address else "?"
        timeout = self.config.handshake_timeout_s
        try:
            raw = await asyncio.wait_for(connection.recv(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            await self._refuse(connection, f"no hello within {timeout:g} s", protocol.CLOSE_POLICY_VIOLATION)
            return None
        except ConnectionClosed:
            return None
        try:
            if isinstance(raw, str):
                raise ProtocolError("text frames are not part of the protocol (binary msgpack only)")
            version, token, client = protocol.parse_hello(wire.decode(raw, self.config.max_message_bytes))
        except wire.WireError as error:
            await self._refuse(connection, f"handshake: {error}", protocol.CLOSE_PROTOCOL_ERROR)
            return None
        if version != protocol.PROTOCOL_VERSION:
            await self._refuse(connection, f"protocol {version} is not served here (this server speaks "
                                           f"{protocol.PROTOCOL_VERSION})", protocol.CLOSE_POLICY_VIOLATION)
            return None
        if not self._token_ok(token):
            log.warning("refused %s (%s): %s", client or "a client", peer,
                        "no token" if token is None else "wrong token")
            await self._refuse(connection, "a valid token is required", protocol.CLOSE_POLICY_VIOLATION)
            return None
        session = Session(f"s{next(self._ids)}", client or peer, peer)
        self._seed(session, None)
        try:
            await connection.send(wire.encode(self._welcome_message(session)))
        except ConnectionClosed:
            return None
        return session

    def _token_ok(self, token: str | None) -> bool:
        if not self.config.token:
            return True
        return token is not None and hmac.compare_digest(token.encode(), str(self.config.token).encode())

    def _welcome_message(self, session: Session) -> dict[str, Any]:
        contract = self.policy.contract
        return {"type": protocol.WELCOME, "protocol": protocol.PROTOCOL_VERSION, "version": package_version(),
                "policy": self.name, "session": session.id, "contract": contract.to_dict(), "fps": contract.fps,
                "chunk_size": contract.chunk_size, "n_action_steps": contract.n_action_steps,
                "image_size": list(contract.image_size) if contract.image_size else None,
                "max_message_bytes": self.config.max_message_bytes}

    def _seed(self, session: Session, seed: int | None) -> None:
        session.seed = seed
        session.noise = self.noise(seed) if self.noise is not None else None

    # -- one request -----------------------------------------------------------------------------
    async def _answer(self, session: Session, raw: bytes | str) -> bytes:
        """The encoded reply to one message (an error reply for anything that fails)."""
        start = time.perf_counter()
        request_id = None
        try:
            if isinstance(raw, str):
                raise ProtocolError("text frames are not part of the protocol (binary msgpack only)")
            message = wire.unpack(raw, self.config.max_message_bytes)
            # The id first, so that a request whose arrays are malformed still gets its error reply.
            request_id = message.get("id") if protocol.is_int(message.get("id")) else None
            request = protocol.parse_request(wire.restore(message))
        except ProtocolError as error:
            return wire.encode(protocol.error_reply(error.request_id if error.request_id is not None else request_id,
                                                    str(error)))
        except wire.WireError as error:
            return wire.encode(protocol.error_reply(request_id, str(error)))
        decoded = time.perf_counter()
        if request.type == protocol.HEALTH:
            return wire.encode(self._health(request))
        if request.type == protocol.RESET:
            self._seed(session, request.seed)
            return wire.encode({"type": protocol.RESET, "id": request.id, "seed": request.seed})
        return await self._infer(session, request, (decoded - start) * MS_PER_S)

    def _health(self, request: Request) -> dict[str, Any]:
        return {"type": protocol.HEALTH, "id": request.id, "status": "ok", "sessions": len(self.sessions),
                "busy": self._busy > 0, "served": self.served,
                "uptime_s": round(time.monotonic() - self._started, 3)}

    async def _infer(self, session: Session, request: Request, decode_ms: float) -> bytes:
        queued = time.perf_counter()
        self._busy += 1
        try:
            actions, infer_ms, queue_ms = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._run_policy, session, request.observation, queued)
        except Exception as error:        # the policy's failure, as a reply carrying its message
            log.warning("session %s: inference failed: %s", session.id, protocol.one_line(error))
            return wire.encode(protocol.error_reply(request.id, protocol.one_line(error)))
        finally:
            self._busy -= 1
        session.inferences += 1
        self.served += 1
        start = time.perf_counter()
        try:
            payload = wire.encode_array(actions)
        except wire.WireError as error:
            return wire.encode(protocol.error_reply(request.id, f"the policy's actions cannot be sent: {error}"))
        encode_ms = (time.perf_counter() - start) * MS_PER_S
        timing = {"decode": decode_ms, "queue": queue_ms, "infer": infer_ms, "encode": encode_ms}
        return wire.encode({"type": protocol.ACTIONS, "id": request.id, "actions": payload, "timing_ms": timing})

    def _run_policy(self, session: Session, observation: dict[str, Any],
                    queued: float) -> tuple[np.ndarray, float, float]:
        """On the worker thread: one chunk for ``session`` (its own noise)."""
        start = time.perf_counter()
        if self.noise is not None:
            chunk = self.policy.infer(observation, generator=session.noise)
        else:
            chunk = self.policy.infer(observation)
        done = time.perf_counter()
        actions = np.asarray(chunk.actions, dtype=np.float32)
        if actions.ndim != 2:
            raise ValueError(f"the policy gave actions of shape {actions.shape}, not (T, A)")
        return actions, (done - start) * MS_PER_S, (start - queued) * MS_PER_S


class ServerThread:
    """A :class:`PolicyServer` on its own event loop in a background thread (tests, benchmarks,
    a notebook): ``with ServerThread(server) as running: running.port ...``."""

    def __init__(self, server: PolicyServer, start_timeout_s: float = 30.0):
        self.server = server
        self.start_timeout_s = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="policy-server", daemon=True)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.server.config.host}:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop, self._ready.set)

        try:
            asyncio.run(main())
        except BaseException as error:      # e.g. the port is taken: raised by start()
            self._error = error
        finally:
            self._ready.set()

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            raise TimeoutError(f"the policy server did not start within {self.start_timeout_s:g} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Close every connection (clients see the server go away) and stop."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ------------------------------------------------------------------------------ entry point
def run(cfg: DictConfig) -> int:
    """``conf/serve.yaml`` -> load the policy once, serve until Ctrl-C."""
    from rlbench_sms.runtime.local_policy import LocalPolicy

    config = ServerConfig(host=str(cfg.host), port=int(cfg.port), token=None if cfg.token is None else str(cfg.token),
                          max_message_mb=float(cfg.max_message_mb), handshake_timeout_s=float(cfg.handshake_timeout_s),
                          name=cfg.get("name"))
    policy = LocalPolicy(cfg.policy_path, device=str(cfg.device), vlm_path=cfg.get("vlm_path"),
                         num_threads=cfg.get("num_threads"))
    server = PolicyServer(policy, config, noise=torch_noise)
    # websockets logs every connection at INFO; the sessions are logged here, with who they are.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if not config.token and config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: no token: anyone who can reach {config.host}:{config.port} can use this policy "
              f"(set token=...)", file=sys.stderr)

    async def main() -> None:
        await server.serve(asyncio.Event(), lambda: print(server.ready_line(), flush=True))

    try:
        asyncio.run(main())
    finally:
        server.close()
        policy.close()
    return 0


@hydra.main(config_path="../../conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from rlbench_sms.cli import run_checked

    code = run_checked(lambda: run(cfg), cfg, "serving failed")
    if code:
        sys.exit(code)


if __name__ == "__main__":
    from rlbench_sms.cli import exit_on_bad_overrides

    exit_on_bad_overrides("serve")     # an unknown key: one line, not Hydra's dump
    main()


__all__ = ["PolicyServer", "ServerConfig", "ServerThread", "Session", "torch_noise", "package_version"]
