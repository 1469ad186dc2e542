"""The policy-serving protocol: the messages, their fields, and the checks on what a peer sends.

One websocket per client; every frame is a binary :mod:`~rlbench_sms.serving.wire` message (a
msgpack map with a ``type``). Text frames are not part of the protocol.

Handshake (the client speaks first, so nothing about the policy is told to a peer without the
token)::

    client -> {"type": "hello", "protocol": 1, "token": str | nil, "client": str}
    server -> {"type": "welcome", "protocol": 1, "version": str, "policy": str, "session": str,
               "contract": PolicyContract.to_dict(), "fps": int | nil, "chunk_size": int,
               "n_action_steps": int, "image_size": [width, height] | nil, "max_message_bytes": int}
           or {"type": "error", "id": nil, "message": str}, then a close (1008 refused token or
              protocol, 1002 not a hello)

Then requests, each with a client-chosen int ``id`` that its reply repeats (a reply to a request
the client gave up on is recognised and skipped)::

    {"type": "health", "id": n}              -> {"type": "health", "id": n, "status": "ok", "sessions": int,
                                                  "busy": bool, "served": int, "uptime_s": float}
    {"type": "reset", "id": n, "seed": int | nil}   -> {"type": "reset", "id": n, "seed": int | nil}
    {"type": "infer", "id": n, "observation": {...}} -> {"type": "actions", "id": n, "actions": float32 (T, A),
                                                  "timing_ms": {"decode", "queue", "infer", "encode"}}
    anything that fails                      -> {"type": "error", "id": n | nil, "message": str}

``reset`` is per session: it seeds *this* client's sampling noise and nothing else. The
observation is :class:`~rlbench_sms.runtime.observation.ObservationBuilder`'s: ``task`` (str) and
arrays under the policy's feature keys (uint8 (3, H, W) images, uint16 (1, H, W) depth in mm,
float32 state and force window, bool pad flags), plus numbers (the runner's ``timestep``). A
message over ``max_message_bytes`` closes the connection with 1009 and a reason (websockets' size
cap); every other malformed message gets an ``error`` reply and the connection goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from rlbench_sms.serving.wire import WireError

PROTOCOL_VERSION = 1

HELLO, WELCOME = "hello", "welcome"
HEALTH, RESET, INFER = "health", "reset", "infer"
ACTIONS, ERROR = "actions", "error"
REQUESTS = (HEALTH, RESET, INFER)

# Websocket close codes (RFC 6455 section 7.4.1).
CLOSE_PROTOCOL_ERROR = 1002      # the first message was not a hello
CLOSE_POLICY_VIOLATION = 1008    # a refused token or protocol version
TASK = "task"


class ProtocolError(WireError):
    """A well-formed message that breaks the protocol; ``request_id`` when it could be read."""

    def __init__(self, message: str, request_id: int | None = None):
        super().__init__(message)
        self.request_id = request_id


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Request:
    """A checked request: its ``type``, ``id`` and the one field it carries (seed / observation)."""

    type: str
    id: int
    seed: int | None = None
    observation: dict[str, Any] | None = None


def parse_hello(message: Mapping[str, Any]) -> tuple[int, str | None, str]:
    """(protocol, token, client name) of a hello; :class:`ProtocolError` for anything else."""
    if message.get("type") != HELLO:
        raise ProtocolError(f"the first message must be a {HELLO!r}, got type {message.get('type')!r}")
    protocol, token, client = message.get("protocol"), message.get("token"), message.get("client", "")
    if not is_int(protocol):
        raise ProtocolError(f"hello: 'protocol' must be an int, got {protocol!r}")
    if token is not None and not isinstance(token, str):
        raise ProtocolError("hello: 'token' must be a string or nil")
    if not isinstance(client, str):
        raise ProtocolError("hello: 'client' must be a string")
    return protocol, token, client


def check_observation(observation: Any, request_id: int) -> dict[str, Any]:
    """An observation map: a ``task`` string, and arrays or scalars (the runner's ``timestep``)
    under str keys."""
    if not isinstance(observation, dict):
        raise ProtocolError(f"infer: 'observation' must be a map, got {type(observation).__name__}", request_id)
    task = observation.get(TASK)
    if not isinstance(task, str):
        raise ProtocolError(f"infer: the observation needs a {TASK!r} string, got {type(task).__name__}", request_id)
    for key, value in observation.items():
        if key != TASK and not isinstance(value, (np.ndarray, int, float)):      # bool is an int
            raise ProtocolError(f"infer: observation[{key!r}] must be an array or a number, got "
                                f"{type(value).__name__}", request_id)
    return observation


def parse_request(message: Mapping[str, Any]) -> Request:
    """The checked :class:`Request` in ``message``; :class:`ProtocolError` naming what is wrong."""
    kind, request_id = message.get("type"), message.get("id")
    if not is_int(request_id):
        raise ProtocolError(f"a request needs an int 'id', got {request_id!r}")
    if kind == HELLO:
        raise ProtocolError("hello: this connection has already been welcomed", request_id)
    if kind not in REQUESTS:
        raise ProtocolError(f"unknown request type {kind!r} (one of {', '.join(REQUESTS)})", request_id)
    if kind == RESET:
        seed = message.get("seed")
        if seed is not None and not is_int(seed):
            raise ProtocolError(f"reset: 'seed' must be an int or nil, got {seed!r}", request_id)
        return Request(kind, request_id, seed=seed)
    if kind == INFER:
        return Request(kind, request_id, observation=check_observation(message.get("observation"), request_id))
    return Request(kind, request_id)


def error_reply(request_id: int | None, message: str) -> dict[str, Any]:
    """An error reply; the message is kept to one line."""
    return {"type": ERROR, "id": request_id, "message": " ".join(str(message).split()) or "error"}


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (what a failed request's error reply says)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = ["PROTOCOL_VERSION", "ProtocolError", "Request", "parse_hello", "parse_request", "check_observation",
           "error_reply", "one_line", "HELLO", "WELCOME", "HEALTH", "RESET", "INFER", "ACTIONS", "ERROR"]
