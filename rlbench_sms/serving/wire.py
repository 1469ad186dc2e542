"""Bytes on the wire: msgpack maps with numpy arrays as raw bytes. Never pickle.

A message is one msgpack **map with str keys** (nested maps, lists, str, int, float, bool, nil,
and arrays). An array travels as the map::

    {"__ndarray__": True, "dtype": "float32", "shape": [2, 3], "data": <raw bytes>}

``dtype`` is one of :data:`DTYPES` (little-endian on the wire, whatever the machine's order);
``data`` is C-ordered and exactly ``prod(shape) * itemsize`` bytes long; bools are bytes 0 / 1.
Nothing else is accepted: no msgpack extension types (msgpack's timestamp included), no object
or structured dtypes, no bytes or int map keys, no message over ``max_bytes``, and trailing bytes
after the map are an error. :func:`decode` checks all of it and gives a :class:`WireError` of one
line for anything malformed, so a peer's bytes can only ever become plain data and numpy arrays.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import msgpack
import numpy as np

ARRAY_MARK = "__ndarray__"
# What an array may hold: numbers and flags. Never "object" (it would need pickle to travel).
DTYPES = frozenset({"uint8", "uint16", "float32", "float64", "int64", "int32", "bool"})
MAX_NDIM = 8                  # images are (3, H, W), force windows (W, C): 8 leaves room, no more
MAX_DEPTH = 32                # maps in maps: a message nests 3 deep; a deep tree is an attack, not data
ARRAY_KEYS = frozenset({ARRAY_MARK, "dtype", "shape", "data"})


class WireError(ValueError):
    """Bytes that are not a well-formed message of this protocol (one line, naming why)."""


# ---------------------------------------------------------------------------------- encode
def _wire_dtype(dtype: np.dtype) -> np.dtype:
    return dtype if dtype.itemsize == 1 else dtype.newbyteorder("<")


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """The wire map of ``array`` (a copy only when it is not C-ordered little-endian already)."""
    name = array.dtype.name
    if name not in DTYPES:
        raise WireError(f"arrays of dtype {name!r} cannot be sent (allowed: {', '.join(sorted(DTYPES))})")
    data = np.ascontiguousarray(array, dtype=_wire_dtype(array.dtype))
    # A byte view, not tobytes(): msgpack copies it into the message once, with no copy before.
    raw = memoryview(data.reshape(-1).view(np.uint8))
    return {ARRAY_MARK: True, "dtype": name, "shape": list(array.shape), "data": raw}


def _default(value: Any) -> Any:
    """msgpack's hook for what it does not know: numpy arrays and scalars; anything else refused."""
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, np.generic) and value.dtype.name in DTYPES:
        return value.item()
    raise WireError(f"a {type(value).__name__} cannot be sent (plain data and numpy arrays only)")


def encode(message: dict[str, Any]) -> bytes:
    """``message`` (a dict with str keys) as msgpack bytes."""
    if not isinstance(message, dict):
        raise WireError(f"a message is a map, not a {type(message).__name__}")
    try:
        return msgpack.packb(message, default=_default, use_bin_type=True, strict_types=False)
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as error:
        raise WireError(f"cannot encode the message: {type(error).__name__}: {error}") from None


class Encoder:
    """Encodes messages into one buffer reused from message to message: an observation is
    megabytes, and a fresh buffer for each costs more in page faults than the encoding itself.
    ``with encoder.encoded(message) as view:`` -- ``view`` is valid inside the block only."""

    def __init__(self):
        self._packer = msgpack.Packer(default=_default, use_bin_type=True, autoreset=False)

    @contextmanager
    def encoded(self, message: dict[str, Any]) -> Iterator[memoryview]:
        if not isinstance(message, dict):
            raise WireError(f"a message is a map, not a {type(message).__name__}")
        self._packer.reset()
        try:
            self._packer.pack(message)
        except WireError:
            self._packer.reset()
            raise
        except (TypeError, ValueError, OverflowError) as error:
            self._packer.reset()
            raise WireError(f"cannot encode the message: {type(error).__name__}: {error}") from None
        view = self._packer.getbuffer()
        try:
            yield view
        finally:
            view.release()                 # the packer's buffer may be reset and grown again


# ---------------------------------------------------------------------------------- decode
def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not accepted")


def decode_array(node: dict[str, Any], where: str) -> np.ndarray:
    """A writable numpy array from its wire map, every field checked."""
    if set(node) != ARRAY_KEYS:
        raise WireError(f"{where}: an array map has exactly the keys {sorted(ARRAY_KEYS)}, got {sorted(node)}")
    name, shape, data = node["dtype"], node["shape"], node["data"]
    if not isinstance(name, str) or name not in DTYPES:
        raise WireError(f"{where}: dtype {name!r} is not accepted (allowed: {', '.join(sorted(DTYPES))})")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise WireError(f"{where}: shape {shape!r} is not a list of at most {MAX_NDIM} non-negative ints")
    if not isinstance(data, bytes):
        raise WireError(f"{where}: data is a {type(data).__name__}, not raw bytes")
    dtype = np.dtype(name)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise WireError(f"{where}: {len(data)} data bytes for {name} {tuple(shape)} (expected {expected})")
    if name == "bool":
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise WireError(f"{where}: a bool array holds bytes other than 0 and 1")
        return raw.astype(bool).reshape(shape)
    # A copy: frombuffer views msgpack's immutable bytes, and torch wants writable arrays.
    return np.frombuffer(data, dtype=_wire_dtype(dtype)).astype(dtype, copy=True).reshape(shape)


def _restore(node: Any, where: str, depth: int = 0) -> Any:
    """Walk the decoded tree: str keys only, arrays rebuilt, foreign objects refused."""
    if depth > MAX_DEPTH:
        raise WireError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        for key in node:
            if not isinstance(key, str):
                raise WireError(f"{where}: map keys must be str, got a {type(key).__name__} key")
        if ARRAY_MARK in node:
            return decode_array(node, where)
        return {key: _restore(value, f"{where}[{key!r}]", depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [_restore(value, f"{where}[{i}]", depth + 1) for i, value in enumerate(node)]
    if node is None or isinstance(node, (str, bytes, bool, int, float)):
        return node
    # msgpack's own Timestamp (extension -1) is decoded without ext_hook: refused here.
    raise WireError(f"{where}: a {type(node).__name__} is not accepted")


def unpack(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """The msgpack map in ``payload`` as plain data (arrays still as their wire maps): the strict
    part of :func:`decode`, so that a message's ``id`` can be read before its arrays are checked."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireError(f"a message is binary msgpack, not {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise WireError(f"the message is {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True,
                                  max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=max_bytes,
                                  max_map_len=max_bytes, max_ext_len=max_bytes)
    except WireError:
        raise
    except msgpack.ExtraData:
        raise WireError("trailing bytes after the message (not one msgpack map)") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as error:
        text = " ".join(str(error).split())
        detail = text if text and text != type(error).__name__ else "malformed bytes"
        raise WireError(f"not a msgpack message: {type(error).__name__}: {detail}") from None
    if not isinstance(message, dict):
        raise WireError(f"a message is a msgpack map, got a {type(message).__name__}")
    return message


def restore(message: dict[str, Any]) -> dict[str, Any]:
    """An unpacked message with every array rebuilt and every value checked (see :func:`decode`)."""
    return _restore(message, "message")


def decode(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """The message in ``payload``: a dict with str keys, arrays as numpy arrays.

    Raises :class:`WireError` (one line) for anything that is not exactly one well-formed message
    of at most ``max_bytes`` bytes.
    """
    return restore(unpack(payload, max_bytes))


__all__ = ["WireError", "Encoder", "encode", "decode", "unpack", "restore", "encode_array", "decode_array",
           "DTYPES", "ARRAY_MARK"]
