"""The robot side of remote inference: :class:`RemotePolicy`, an InferencePolicy whose model runs
on a policy server (:mod:`rlbench_sms.serving.server`). Torch-free: numpy, msgpack, websockets.

Synchronous (the policy runner calls ``infer`` from its loop or its request thread), one
connection, one request in flight. The contract comes from the server's welcome. Each RGB frame
the policy reads is shrunk to the size the policy would resize it to before it is sent
(:mod:`rlbench_sms.serving.images`); depth goes as it is (uint16 millimetres, exact).

When the server is away every call is bounded: ``infer`` raises
:class:`~rlbench_sms.runtime.inference.PolicyUnavailable` (the runner holds the arm still and
asks again) and reconnects on a later call with exponential backoff. A restarted server is met
with a new handshake (the same policy, or a one-line error) and a ``reset`` with this episode's
seed. A policy failure on the server comes back as :class:`InferenceError` with its message.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from rlbench_sms.runtime.contract import ContractError, PolicyContract
from rlbench_sms.runtime.inference import ActionChunk, InferenceError, PolicyUnavailable
from rlbench_sms.serving import protocol, wire
from rlbench_sms.serving.images import ImageShrinker

MS_PER_S = 1000.0
BYTES_PER_MB = 1 << 20
# The largest reply taken: a welcome (the contract) or an action chunk is a few kB; this cap only
# keeps a misbehaving peer from filling the robot PC's memory.
MAX_REPLY_BYTES = 16 * BYTES_PER_MB
# Requests go out as websocket fragments of this size: the server parses each one as it arrives
# (both ends work at once) and no multi-megabyte frame is built and masked in one piece. For a
# 2.4 MB observation on loopback this halves the round trip (p50 7.6 -> 3.4 ms on the dev box).
FRAGMENT_BYTES = 64 * 1024
# The conf/inference keys RemotePolicy takes (evaluation.build_policy passes those that are set).
CLIENT_SETTINGS = ("timeout_s", "connect_timeout_s", "backoff_s", "max_backoff_s", "resize_images")
# What a connection that is gone or never came raises, in websockets' sync client.
_TRANSPORT_ERRORS = (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, EOFError)


class ServerRefused(InferenceError):
    """The server will not serve this client (a wrong token, another protocol, another policy)."""


def server_uri(server: str) -> str:
    """``host:port`` (or a ``ws://`` / ``wss://`` URI) -> the websocket URI."""
    text = str(server).strip()
    if text.startswith(("ws://", "wss://")):
        return text
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"inference.server={server!r}: expected host:port, e.g. gpu-box:8765")
    return f"ws://{host}:{port}"


class RemotePolicy:
    """A policy served at ``server`` (``host:port``), behind the InferencePolicy interface.

    ``timeout_s``: the longest wait for one reply (longer than the policy's slowest chunk);
    ``connect_timeout_s``: for one connection attempt and its handshake; ``backoff_s`` ..
    ``max_backoff_s``: the wait between failed reconnection attempts, doubling. ``resize_images``:
    shrink RGB frames to the policy's input size before sending.
    """

    def __init__(self, server: str, token: str | None = None, *, timeout_s: float = 10.0,
                 connect_timeout_s: float = 2.0, backoff_s: float = 0.1, max_backoff_s: float = 2.0,
                 resize_images: bool = True, client_name: str | None = None):
        for name, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s),
                            ("backoff_s", backoff_s), ("max_backoff_s", max_backoff_s)):
            if not value > 0:
                raise ValueError(f"inference.{name}={value}: must be positive")
        self.uri = server_uri(server)
        self.server = str(server)
        self.token = None if token is None else str(token)
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = max(float(max_backoff_s), self.backoff_s)
        self.resize_images = bool(resize_images)
        self.client_name = client_name or f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()           # one request at a time on the one connection
        self._connection: ClientConnection | None = None
        self._stack: ExitStack | None = None
        self._request_ids = 0
        self._seed: int | None = None
        self._was_reset = False
        self._retry_at = 0.0                    # time.monotonic() of the next reconnection attempt
        self._delay = self.backoff_s
        self.max_message_bytes = 0              # the server's cap on requests, from its welcome
        self._encoder = wire.Encoder()          # one buffer reused for every request
        try:
            self.welcome = self._connect()
        except _TRANSPORT_ERRORS as error:
            raise InferenceError(f"policy server {self.server}: cannot connect ({_why(error)})") from None
        self.contract: PolicyContract = self._contract_of(self.welcome)
        self._shrink = ImageShrinker(self.contract, self.image_size)
        self.max_message_bytes = int(self.welcome.get("max_message_bytes") or 0)

    # -- InferencePolicy ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Seed this client's session on the server. While the server is away the seed is kept
        and sent after the next handshake (never raises for an absent server)."""
        with self._lock:
            self._seed, self._was_reset = seed, True
            if self._connection is None:
                return
            try:
                self._request(protocol.RESET, {"seed": seed})
            except PolicyUnavailable:
                pass                                # re-sent with the next handshake

    def infer(self, observation: Mapping[str, Any]) -> ActionChunk:
        start = time.perf_counter()
        with self._lock:
            self._ensure_connected()                # a reconnection counts in the round trip
            connected = time.perf_counter()
            sent = self._shrink(observation) if self.resize_images else observation
            resized = time.perf_counter()
            with self._encoded(protocol.INFER, {"observation": dict(sent)}) as payload:
                encoded = time.perf_counter()
                reply, received = self._exchange(payload)
        decoded = time.perf_counter()
        actions = reply.get("actions")
        if not isinstance(actions, np.ndarray) or actions.dtype != np.float32 or actions.ndim != 2:
            raise InferenceError(f"policy server {self.server}: a reply without (T, A) float32 actions")
        timing = {k: float(v) for k, v in (reply.get("timing_ms") or {}).items() if isinstance(v, (int, float))}
        timing.update(resize=(resized - connected) * MS_PER_S, client_encode=(encoded - resized) * MS_PER_S,
                      client_decode=(decoded - received) * MS_PER_S, round_trip=(decoded - start) * MS_PER_S)
        return ActionChunk(actions, timing)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- extras ------------------------------------------------------------------------------------
    @property
    def image_size(self) -> list[int] | None:
        return self.welcome.get("image_size")

    def health(self) -> dict[str, Any]:
        """The server's health reply (sessions, busy, served, uptime_s)."""
        with self._lock:
            self._ensure_connected()
            return self._request(protocol.HEALTH, {})

    # -- connection --------------------------------------------------------------------------------
    def _connect(self) -> dict[str, Any]:
        """Open a connection and shake hands; the welcome message."""
        # The connection outlives this call: held open in an ExitStack (websockets' supported way
        # of keeping a connect() context), closed by _drop.
        stack = ExitStack()
        try:
            connection = stack.enter_context(connect(self.uri, open_timeout=self.connect_timeout_s,
                                                     close_timeout=self.connect_timeout_s, compression=None,
                                                     max_size=MAX_REPLY_BYTES))
            connection.send(wire.encode({"type": protocol.HELLO, "protocol": protocol.PROTOCOL_VERSION,
                                         "token": self.token, "client": self.client_name}))
            welcome = self._decode(connection.recv(timeout=self.connect_timeout_s))
            if welcome.get("type") == protocol.ERROR:
                raise ServerRefused(f"policy server {self.server} refused this client: {welcome.get('message')}")
            if welcome.get("type") != protocol.WELCOME:
                raise ServerRefused(f"policy server {self.server}: expected a welcome, got {welcome.get('type')!r}")
        except BaseException:
            _close_quietly(stack)
            raise
        self._connection, self._stack = connection, stack
        return welcome

    def _contract_of(self, welcome: Mapping[str, Any]) -> PolicyContract:
        try:
            return PolicyContract.from_dict(welcome.get("contract") or {})
        except ContractError as error:
            raise ServerRefused(f"policy server {self.server}: {error}") from None

    def _ensure_connected(self) -> None:
        """Reconnect when the connection is gone and the backoff allows; else PolicyUnavailable."""
        if self._connection is not None:
            return
        now = time.monotonic()
        if now < self._retry_at:
            raise PolicyUnavailable(f"policy server {self.server} is away; next attempt in "
                                    f"{self._retry_at - now:.2f} s")
        try:
            welcome = self._connect()
        except _TRANSPORT_ERRORS as error:
            self._retry_at = time.monotonic() + self._delay
            self._delay = min(self._delay * 2.0, self.max_backoff_s)
            raise PolicyUnavailable(f"policy server {self.server} is away ({_why(error)})") from None
        if welcome.get("contract") != self.welcome.get("contract"):
            self._drop()
            raise ServerRefused(f"policy server {self.server} came back serving another policy "
                                f"({welcome.get('policy')}); restart the evaluation")
        self.welcome = welcome
        self._delay = self.backoff_s
        if self._was_reset:               # the new session starts this episode's noise again
            self._request(protocol.RESET, {"seed": self._seed})

    def _drop(self) -> None:
        stack, self._stack, self._connection = self._stack, None, None
        if stack is not None:
            _close_quietly(stack)

    def _lost(self, error: BaseException) -> PolicyUnavailable:
        """The connection broke: drop it, try again on the next call."""
        self._drop()
        self._retry_at = time.monotonic()
        return PolicyUnavailable(f"policy server {self.server}: connection lost ({_why(error)}); reconnecting")

    # -- messages ----------------------------------------------------------------------------------
    @contextmanager
    def _encoded(self, kind: str, fields: Mapping[str, Any]) -> Iterator[memoryview]:
        """The request as bytes in the client's reused buffer (valid inside the block)."""
        self._request_ids += 1
        try:
            with self._encoder.encoded({"type": kind, "id": self._request_ids, **fields}) as payload:
                if self.max_message_bytes and len(payload) > self.max_message_bytes:
                    raise InferenceError(f"policy server {self.server}: the {kind} message is "
                                         f"{len(payload) / BYTES_PER_MB:.1f} MB, over the server's max_message_mb "
                                         f"({self.max_message_bytes / BYTES_PER_MB:.1f} MB)")
                yield payload
        except wire.WireError as error:
            raise InferenceError(f"policy server {self.server}: {error}") from None

    def _decode(self, raw: Any) -> dict[str, Any]:
        try:
            return wire.decode(raw, MAX_REPLY_BYTES)
        except wire.WireError as error:
            raise InferenceError(f"policy server {self.server}: a malformed reply ({error})") from None

    def _exchange(self, payload: bytes | memoryview) -> tuple[dict[str, Any], float]:
        """Send one request, wait for its reply (skipping replies to abandoned ones)."""
        request_id = self._request_ids
        connection = self._connection
        assert connection is not None
        deadline = time.monotonic() + self.timeout_s
        try:
            if len(payload) > FRAGMENT_BYTES:
                connection.send(payload[i:i + FRAGMENT_BYTES] for i in range(0, len(payload), FRAGMENT_BYTES))
            else:
                connection.send(payload)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no reply within {self.timeout_s:g} s")
                raw = connection.recv(timeout=remaining)
                received = time.perf_counter()
                reply = self._decode(raw)
                if reply.get("id") == request_id:
                    break
        except _TRANSPORT_ERRORS as error:
            raise self._lost(error) from None
        if reply.get("type") == protocol.ERROR:
            raise InferenceError(f"policy server {self.server}: {reply.get('message')}")
        return reply, received

    def _request(self, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._encoded(kind, fields) as payload:
            reply, _ = self._exchange(payload)
        return reply


def _close_quietly(stack: ExitStack) -> None:
    try:
        stack.close()
    except _TRANSPORT_ERRORS:
        pass


def _why(error: BaseException) -> str:
    if isinstance(error, ConnectionClosed):
        frame = error.rcvd
        if frame is not None:
            return f"closed by the server: {frame.code} {frame.reason}".strip()
        return "connection closed"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = ["RemotePolicy", "ServerRefused", "server_uri", "CLIENT_SETTINGS"]
