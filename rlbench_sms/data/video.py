"""Video files of a dataset, through PyAV: encode, decode at timestamps, concatenate, probe.

Colour is lossy (AV1 by default, LeRobot's settings); depth is exact (FFV1 ``gray16le``,
uint16 millimetres) or, to read and reproduce LeRobot's depth, 12-bit log-quantised lossless HEVC
(``gray12le``, see ``depth_codec``).

Time: frame i of a file we encode carries pts i in a 1/fps codec time base. The mp4 muxer
rewrites the stream time base to 1/(fps·2^k) (the smallest such timescale >= 10000, e.g. 1/15360
at 30 fps), which is still an integer multiple of 1/fps, so frame i decodes at exactly i/fps.
Concatenation shifts packets by integer ticks computed from the total frame count before each
input, so there is no drift however many episodes a file holds.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import av
import numpy as np

from rlbench_sms.data.depth_codec import DepthQuantization, quantize_depth, dequantize_depth
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.layout import atomic_write

__all__ = [
    "VideoEncoderConfig", "DepthEncoderConfig", "VideoEncoder", "concatenate_videos",
    "VideoProbe", "probe_video", "frame_times", "truncate_video", "DepthQuantization",
    "VideoDecoder", "decode_all",
]

# Containers by file suffix; anything else (e.g. a ".tmp-..." staging name) is written as mp4.
_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".nut": "nut", ".mov": "mov"}

_SVTAV1 = ("libsvtav1", "av1", "svtav1")
_X264 = ("h264", "libx264", "x264")
_X265 = ("hevc", "libx265", "h265", "x265")
_FFV1 = ("ffv1",)

# Time comparisons: frame times are exact rationals rounded to float; requests are floats.
# Anything much smaller than a frame interval (>= 1 ms for fps <= 1000) works.
_EPS_S = 1e-7

# SVT-AV1 prints a configuration banner (~25 lines) on every encoder open unless its own log
# level (env SVT_LOG: 1 = errors only) says otherwise; it is not routed through av.logging.
_SVT_LOG_ERRORS_ONLY = "1"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _merge_params(base: str, extra: str | None) -> str:
    """Join ``key=value:key=value`` parameter strings (x265-params, svtav1-params); extra wins."""
    return ":".join(p for p in (base, extra) if p)


# --------------------------------------------------------------------------------------------
# Encoder configs
# --------------------------------------------------------------------------------------------

DEFAULT_SVT_PRESET = 12     # LeRobot (PR #2514): ~1.5x faster than SVT's default 8; SVT maps 12 to 11


@dataclass
class VideoEncoderConfig:
    """RGB encoding; defaults are LeRobot v3.0's (AV1, yuv420p, keyframe every 2 frames, crf 30).

    ``preset`` is SVT-AV1's number or x264's name ("medium", ...); None = the codec's default.
    The SVT-AV1 default 12 means nothing to x264, so with ``vcodec="h264"`` it is dropped (x264
    then uses its default, "medium"); give a name to choose one.
    ``fast_decode`` is SVT-AV1's ``fast-decode`` (0 = off), kept for LeRobot's info fields: with
    the SVT-AV1 4.1 in PyAV 18.1 it changes nothing (identical files at presets 4, 8 and 12).
    ``threads`` None = codec default (SVT-AV1: ``lp``; x264: thread count).
    """

    vcodec: str = "libsvtav1"
    pix_fmt: str = "yuv420p"
    g: int = 2
    crf: int | None = 30
    preset: int | str | None = DEFAULT_SVT_PRESET
    fast_decode: int = 0
    threads: int | None = None
    extra_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.vcodec.lower()
        if name not in _SVTAV1 + _X264:
            raise ValueError(f"unsupported RGB vcodec {self.vcodec!r}: use 'libsvtav1' or 'h264'")
        if name in _X264 and isinstance(self.preset, int):
            if self.preset != DEFAULT_SVT_PRESET:
                raise ValueError(f"x264 preset must be a name like 'medium', got {self.preset!r}")
            self.preset = None
        if self.g < 1:
            raise ValueError(f"g (keyframe interval) must be >= 1, got {self.g}")

    @property
    def is_depth(self) -> bool:
        return False

    @property
    def encoder_name(self) -> str:
        return "libsvtav1" if self.vcodec.lower() in _SVTAV1 else "libx264"

    def codec_options(self) -> dict[str, str]:
        opts: dict[str, str] = {"g": str(self.g)}
        extra = dict(self.extra_options)
        if self.crf is not None:
            opts["crf"] = str(self.crf)
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        if self.encoder_name == "libsvtav1":
            params = f"fast-decode={self.fast_decode}"
            if self.threads:
                params += f":lp={self.threads}"       # SVT's "logical processors"
            opts["svtav1-params"] = _merge_params(params, extra.pop("svtav1-params", None))
        opts.update({k: str(v) for k, v in extra.items()})
        return opts

    def info(self) -> dict[str, Any]:
        return {"video.g": self.g, "video.crf": self.crf, "video.preset": self.preset,
                "video.fast_decode": self.fast_decode,
                "video.extra_options": dict(self.extra_options)}


@dataclass
class DepthEncoderConfig:
    """Depth encoding.

    ``vcodec="ffv1"`` (default): uint16 millimetres as ``gray16le``, bit-exact. Settings chosen
    with ``benchmarks/depth_codec.py`` (480x640 tabletop depth, ~1-2 mm sensor noise, one thread):
    level 3 (per-slice CRCs, multi-slice) with FFmpeg's coder and context defaults, 4 slices.
    For samples over 8 bits FFmpeg always uses the range coder with a custom state table
    (``coder=rice`` is overridden); ``coder=range_def`` is ~1 % larger, the large context model
    (``context=1``) ~0.4 % larger, 16 or 24 slices ~0.5 % larger, and none decodes faster. The
    sensor noise (~2.5 bits/pixel of entropy) dominates the size: ~5x smaller than raw, where
    16-bit PNG reaches ~3.7x and zstd ~3.2x. ``slices`` is pinned to 4 (FFmpeg's own pick at 640x480)
    so that the file layout is explicit rather than left to the encoder.

    ``vcodec="hevc"``: LeRobot's depth (12-bit log-quantised codes, lossless x265, ``gray12le``),
    to produce LeRobot-style files such as test fixtures. We add ``bframes=0:open-gop=0`` so the
    files are randomly accessible (LeRobot's own have B-frames; our reader copes with both).
    ``depth_min``/``depth_max``/``shift`` are metres, LeRobot's defaults; hevc only.
    """

    vcodec: str = "ffv1"
    pix_fmt: str = "gray16le"
    g: int = 1
    level: int = 3
    threads: int | None = 1
    depth_min: float = 0.01
    depth_max: float = 10.0
    shift: float = 3.5
    use_log: bool = True
    coder: str | None = None    # ffv1: "rice", "range_def", "range_tab"; None = FFmpeg's choice
    context: int | None = None  # ffv1: 0 small, 1 large context model; None = FFmpeg's (0)
    slices: int | None = 4      # ffv1 level 3: slices per frame (4, 6, 9, 12, 16, 24, ...)
    extra_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.vcodec.lower()
        if name in _FFV1:
            if self.pix_fmt != "gray16le":
                raise ValueError(f"ffv1 depth is stored as gray16le (uint16 mm), got {self.pix_fmt!r}")
        elif name in _X265:
            if self.pix_fmt == "gray16le":        # the dataclass default belongs to ffv1
                self.pix_fmt = "gray12le"
            if self.pix_fmt != "gray12le":
                raise ValueError(f"hevc depth is stored as gray12le codes, got {self.pix_fmt!r}")
            DepthQuantization(self.depth_min, self.depth_max, self.shift, self.use_log)  # validates
        else:
            raise ValueError(f"unsupported depth vcodec {self.vcodec!r}: use 'ffv1' or 'hevc'")
        if self.g < 1:
            raise ValueError(f"g (keyframe interval) must be >= 1, got {self.g}")

    @property
    def is_depth(self) -> bool:
        return True

    @property
    def is_quantized(self) -> bool:
        return self.vcodec.lower() in _X265

    @property
    def encoder_name(self) -> str:
        return "libx265" if self.is_quantized else "ffv1"

    @property
    def quantization(self) -> DepthQuantization:
        return DepthQuantization(self.depth_min, self.depth_max, self.shift, self.use_log)

    def codec_options(self) -> dict[str, str]:
        extra = dict(self.extra_options)
        opts: dict[str, str] = {"g": str(self.g)}
        if self.is_quantized:
            params = "lossless=1:bframes=0:open-gop=0:log-level=error"
            if self.threads:
                params += f":pools={self.threads}:frame-threads=1"
            opts["x265-params"] = _merge_params(params, extra.pop("x265-params", None))
        else:
            opts["level"] = str(self.level)
            for key in ("coder", "context", "slices"):
                value = getattr(self, key)
                if value is not None:
                    opts[key] = str(value)
        opts.update({k: str(v) for k, v in extra.items()})
        return opts

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video.g": self.g, "video.crf": None, "video.preset": None,
                               "video.fast_decode": None}
        if self.is_quantized:
            out["video.extra_options"] = {**self.extra_options,
                                          "x265-params": self.codec_options()["x265-params"]}
            out.update(self.quantization.info())
        else:
            out["video.extra_options"] = {k: v for k, v in self.codec_options().items() if k != "g"}
        return out


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------

class VideoEncoder:
    """Encode frames one by one into a video file; a context manager.

    RGB frames are (H, W, 3) uint8; depth frames (H, W) or (H, W, 1) uint16 millimetres
    (0 = invalid). The first frame fixes the size. Frame i is stamped i/fps exactly.
    Leaving the ``with`` block on an exception deletes the partial file.
    """

    def __init__(self, path: Path | str, fps: int, config: VideoEncoderConfig | DepthEncoderConfig):
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        self.path = Path(path)
        self.fps = int(fps)
        self.config = config
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None       # (H, W)
        self._n = 0
        self._info: dict[str, Any] | None = None
        self._time_base = Fraction(1, self.fps)

    @property
    def num_frames(self) -> int:
        return self._n

    def __enter__(self) -> "VideoEncoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check(self, frame: np.ndarray) -> np.ndarray:
        arr = np.asarray(frame)
        if self.config.is_depth:
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            if arr.ndim != 2 or arr.dtype != np.uint16:
                raise ValueError(f"{self.path}: depth frames must be (H, W) or (H, W, 1) uint16 "
                                 f"millimetres, got {arr.shape} {arr.dtype}")
        elif arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{self.path}: RGB frames must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        size = (int(arr.shape[0]), int(arr.shape[1]))
        if self._size is not None and size != self._size:
            raise ValueError(f"{self.path}: frame {self._n} is {size[0]}x{size[1]} (HxW) but the "
                             f"video is {self._size[0]}x{self._size[1]}")
        return np.ascontiguousarray(arr)

    def _open(self, height: int, width: int) -> None:
        cfg = self.config
        if cfg.pix_fmt.startswith("yuv420") and (height % 2 or width % 2):
            raise ValueError(f"{self.path}: {cfg.pix_fmt} needs even width and height, got {height}x{width} (HxW)")
        if cfg.encoder_name == "libsvtav1":
            os.environ.setdefault("SVT_LOG", _SVT_LOG_ERRORS_ONLY)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fmt = _FORMATS.get(self.path.suffix.lower(), "mp4")
        copts = {"movflags": "faststart"} if fmt in ("mp4", "mov") else {}
        container = av.open(str(self.path), "w", format=fmt, container_options=copts)
        try:
            stream = container.add_stream(cfg.encoder_name, rate=self.fps, options=cfg.codec_options())
            stream.width, stream.height, stream.pix_fmt = width, height, cfg.pix_fmt
            stream.codec_context.time_base = self._time_base
            if cfg.threads:
                stream.codec_context.thread_count = int(cfg.threads)
        except BaseException:
            container.close()
            self.path.unlink(missing_ok=True)
            raise
        self._container, self._stream, self._size = container, stream, (height, width)

    def add(self, frame: np.ndarray) -> None:
        if self._info is not None:
            raise RuntimeError(f"{self.path}: encoder already closed")
        arr = self._check(frame)
        if self._container is None:
            self._open(*arr.shape[:2])
        cfg = self.config
        if isinstance(cfg, DepthEncoderConfig) and cfg.is_quantized:
            # feed the 12-bit codes natively: a gray16le frame would be rescaled 16->12 bit
            vf = av.VideoFrame.from_ndarray(quantize_depth(arr, cfg.quantization), format="gray12le")
        elif cfg.is_depth:
            vf = av.VideoFrame.from_ndarray(arr, format="gray16le")
        else:
            vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
        vf.pts = self._n
        vf.time_base = self._time_base
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self._n += 1

    def close(self) -> dict[str, Any]:
        """Flush and finish the file; returns the feature ``info`` for ``meta/info.json``."""
        if self._info is not None:
            return self._info
        if self._container is None:
            raise ValueError(f"{self.path}: no frames were added; refusing to write an empty video")
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except BaseException:
            self.abort()
            raise
        self._container.close()
        self._container = None
        h, w = self._size  # type: ignore[misc]
        cfg = self.config
        codec = av.codec.Codec(cfg.encoder_name, "w").canonical_name
        self._info = {
            "video.height": h, "video.width": w, "video.codec": codec, "video.pix_fmt": cfg.pix_fmt,
            "video.fps": self.fps, "video.channels": 1 if cfg.is_depth else 3,
            "has_audio": False, "is_depth_map": cfg.is_depth, **cfg.info(),
        }
        return self._info

    def abort(self) -> None:
        """Stop without finishing: close what is open and delete the partial file."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:       # the file is being discarded; its trailer does not matter
                pass
            self._container = None
        if self._info is None:
            self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Probe and concatenation
# --------------------------------------------------------------------------------------------

@dataclass
class VideoProbe:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str
    duration_s: float
    time_base: Fraction


@dataclass
class _Scan:
    probe: VideoProbe
    rate: Fraction          # exact frame rate
    first_pts: int          # smallest pts, stream time base


def _open_input(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(path, "video", "file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DatasetError(path, "video", f"cannot open: {_one_line(e)}") from None
    if not container.streams.video:
        container.close()
        raise DatasetError(path, "video", "no video stream (truncated or not a video?)")
    return container


def _stream_rate(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _scan(path: Path | str) -> _Scan:
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        cc = stream.codec_context
        n, first, end = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:      # demuxer's end-of-stream marker
                    continue
                n += 1
                pts = int(packet.pts)
                first = pts if first is None else min(first, pts)
                stop = pts + int(packet.duration or 0)
                end = stop if end is None else max(end, stop)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise DatasetError(path, "video", f"unreadable after {n} packets (truncated or corrupt?): "
                                              f"{_one_line(e)}") from None
        declared = int(stream.frames or 0)
        if declared and n != declared:
            raise DatasetError(path, "video", f"the index lists {declared} frames but {n} could be "
                                              f"read (truncated or corrupt?)")
        if n == 0:
            raise DatasetError(path, "video", "no frames")
        if not cc.width or not cc.height:
            raise DatasetError(path, "video", "frame size unknown (corrupt header?)")
        rate = _stream_rate(stream)
        if rate is None:
            raise DatasetError(path, "video", "frame rate unknown")
        tb = Fraction(stream.time_base)
        if end is None or end <= first:     # no packet durations: assume one frame interval each
            duration = Fraction(n) / rate
        else:
            duration = (end - first) * tb
        codec = cc.codec.canonical_name if cc.codec else cc.name
        pix_fmt = cc.format.name if cc.format else (cc.pix_fmt or "")
        probe = VideoProbe(num_frames=n, fps=float(rate), width=int(cc.width), height=int(cc.height),
                           codec=codec, pix_fmt=pix_fmt, duration_s=float(duration), time_base=tb)
        return _Scan(probe=probe, rate=rate, first_pts=int(first))
    finally:
        container.close()


def probe_video(path: Path | str) -> VideoProbe:
    """Frame count (by demuxing every packet, no decoding), size, codec, rate and duration.

    A missing, unreadable or truncated file raises ``DatasetError(path, "video", ...)``.
    """
    return _scan(path).probe


def concatenate_videos(inputs: Sequence[Path | str], output: Path | str) -> list[float]:
    """Stream-copy ``inputs`` (same codec, size, pixel format and rate) into one mp4.

    Input k starts at (frames in inputs 0..k-1)/fps in the output, exactly: its packets are shifted
    by an integer number of ticks computed from that frame count. ``output`` is replaced
    atomically and may be one of the inputs (appending an episode to an existing file).
    Returns each input's start time in seconds.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("concatenate_videos needs at least one input")
    scans = [_scan(p) for p in paths]
    ref = scans[0]
    for p, s in zip(paths[1:], scans[1:]):
        for name in ("codec", "pix_fmt", "width", "height"):
            a, b = getattr(ref.probe, name), getattr(s.probe, name)
            if a != b:
                raise ValueError(f"cannot concatenate {p} ({name} {b}) after {paths[0]} ({name} {a})")
        if s.rate != ref.rate:
            raise ValueError(f"cannot concatenate {p} (fps {s.rate}) after {paths[0]} (fps {ref.rate})")
    rate = ref.rate
    starts: list[Fraction] = []
    total = 0
    for s in scans:
        starts.append(Fraction(total) / rate)
        total += s.probe.num_frames

    def write(tmp: Path) -> None:
        with _CopyTarget(tmp, paths[0]) as target:
            for path, scan, start in zip(paths, scans, starts):
                target.copy(path, scan, start)

    atomic_write(Path(output), write)
    return [float(s) for s in starts]


class _CopyTarget:
    """An mp4 being written by stream copy, with one video stream like ``template_path``'s."""

    def __init__(self, path: Path, template_path: Path):
        self.out = av.open(str(path), "w", format="mp4", container_options={"movflags": "faststart"})
        try:
            with av.open(str(template_path)) as src:
                template = src.streams.video[0]
                # opaque=True copies the codec parameters without looking up an encoder (there is
                # none named after the decoder, e.g. libdav1d)
                self.stream = self.out.add_stream_from_template(template, opaque=True)
                self.stream.time_base = template.time_base
        except BaseException:
            self.out.close()
            raise

    def __enter__(self) -> "_CopyTarget":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.out.close()

    def copy(self, path: Path, scan: _Scan, start: Fraction, end_pts: int | None = None,
             begin_pts: int | None = None) -> None:
        """Append ``path``'s packets so that its first frame is at ``start`` seconds.

        With ``end_pts``, only packets presented before it (input time base) are copied; with
        ``begin_pts``, only those presented from it on (and that one lands at ``start``).
        """
        with av.open(str(path)) as src:
            stream = src.streams.video[0]
            offset = start / Fraction(stream.time_base)     # ticks of this input's time base
            first = scan.first_pts if begin_pts is None else begin_pts
            shift = round(offset) - first                   # exact: the tb is 1/(fps*2^k)
            for packet in src.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                if end_pts is not None and packet.pts >= end_pts:
                    continue
                if begin_pts is not None and packet.pts < begin_pts:
                    continue
                packet.pts += shift
                if packet.dts is not None:
                    packet.dts += shift
                packet.stream = self.stream
                self.out.mux(packet)


def frame_times(path: Path | str) -> np.ndarray:
    """Presentation time (seconds) of every frame, ascending, from the packets (no decoding)."""
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base)
        pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(int(packet.pts))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise DatasetError(path, "video", f"unreadable after {len(pts)} packets (truncated or "
                                              f"corrupt?): {_one_line(e)}") from None
    finally:
        container.close()
    pts.sort()
    return np.array([float(p * tb) for p in pts], dtype=np.float64)


def truncate_video(path: Path | str, num_frames: int, output: Path | str) -> None:
    """Stream-copy the first ``num_frames`` frames (presentation order) of ``path`` to ``output``.

    Meant to cut a concatenated file at an episode boundary (each episode was encoded on its own,
    starting with a keyframe, so no kept frame refers to a dropped one). ``output`` is written
    directly as mp4 (whatever its name); wrap the call in ``layout.atomic_write`` to replace.
    """
    path = Path(path)
    scan = _scan(path)
    if not 0 < num_frames <= scan.probe.num_frames:
        raise ValueError(f"{path}: cannot keep {num_frames} of {scan.probe.num_frames} frames")
    end_pts = scan.first_pts + round(Fraction(num_frames) / scan.rate / scan.probe.time_base)
    with _CopyTarget(Path(output), path) as target:
        target.copy(path, scan, Fraction(0), end_pts=end_pts)


def copy_segment(path: Path | str, start_s: float, end_s: float, output: Path | str) -> int:
    """Stream-copy the frames of ``path`` presented in [``start_s``, ``end_s``) into their own mp4,
    the first at 0 s (one episode out of a concatenated file: each episode was encoded on its own,
    starting with a keyframe, so the copy needs no re-encoding). Returns the frames copied; the
    output is replaced atomically."""
    path = Path(path)
    scan = _scan(path)
    tb = scan.probe.time_base
    # Presentation times are pts * time base (frame_times); half a frame of slack, since a span's
    # bounds are frame times stored as floats.
    half = Fraction(1, 2) / scan.rate
    begin = round((Fraction(start_s) - half) / tb)
    end = round((Fraction(end_s) - half) / tb)
    count = sum(1 for t in frame_times(path) if start_s - float(half) <= t < end_s - float(half))
    if count == 0:
        raise ValueError(f"{path}: no frame in [{start_s:g}, {end_s:g}) s")

    def write(tmp: Path) -> None:
        with _CopyTarget(tmp, path) as target:
            target.copy(path, scan, Fraction(0), end_pts=end, begin_pts=max(begin, scan.first_pts))

    atomic_write(Path(output), write)
    return count


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------

# Codecs whose every frame is a keyframe: decoded with slice threads only (see _ensure_open).
INTRA_ONLY_CODECS = ("ffv1",)

# Decoder state inherited through fork, kept referenced so that it is never deallocated.
_FORKED_LEFTOVERS: list[Any] = []


class _Frame:
    """A decoded frame, its time, and its array converted on first use."""

    __slots__ = ("time", "pts", "frame", "_array")

    def __init__(self, time: float, pts: int, frame: Any):
        self.time, self.pts, self.frame, self._array = time, pts, frame, None

    def array(self, quantization: DepthQuantization | None) -> np.ndarray:
        if self._array is None:
            f = self.frame
            if f.format.name.startswith("gray"):
                # native format: gray12le stays 0..4095 codes, gray16le stays millimetres
                arr = f.to_ndarray()
                if quantization is not None:
                    arr = dequantize_depth(arr, quantization)
            else:
                arr = f.to_ndarray(format="rgb24")
            self._array = arr
            self.frame = None       # the array is all we need from now on
        return self._array


class VideoDecoder:
    """Frames of one video file at given timestamps (seconds).

    Opens the file on first use and keeps it open; a decoder created in one process and used in a
    forked child reopens the file there (a shared file offset would corrupt both readers).
    ``thread_count`` defaults to 1: codec worker threads (dav1d decodes ahead) can be mid-work
    when a DataLoader forks, and a child inheriting a lock they held deadlocks; single-threaded
    decoders also read random frames fastest here (see ``reader.DatasetReader``). Pass 0 (FFmpeg's
    choice) for long sequential reads in a process that never forks.
    Requests just after the last decoded frame continue decoding without a seek, so sequential
    reads cost one frame each. After a seek, frames are matched by pts, and if the seek landed
    after the first requested time (HEVC with B-frames/open GOP, where the demuxer's keyframe
    index is in decode order) it seeks further back.
    """

    def __init__(self, path: Path | str, quantization: DepthQuantization | None = None,
                 thread_count: int = 1):
        self.path = Path(path)
        self.quantization = quantization
        self.thread_count = int(thread_count)
        self._reset_state()
        self._pid: int | None = None
        self._container: Any = None

    def _forget_inherited(self) -> None:
        """Drop, without freeing, what this decoder held in the process it was forked from.

        The inherited file descriptor shares the parent's file offset, so reading through it would
        move the parent's position: the child opens the file afresh. The inherited container and
        frames are never closed or freed here: the decoder's worker threads (and any lock they
        held) do not exist in this process, and freeing them would try to join or lock them.
        """
        _FORKED_LEFTOVERS.append((self._container, self._frames, self._last, self._peek))
        self._container = self._pid = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._frames: Iterator[Any] | None = None
        self._last: _Frame | None = None    # last frame taken from the current decode iterator
        self._peek: _Frame | None = None    # decoded but not yet taken

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "quantization": self.quantization, "thread_count": self.thread_count}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["quantization"], state["thread_count"])

    def __enter__(self) -> "VideoDecoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._pid is not None and self._pid != os.getpid():
            self._forget_inherited()
            return
        container = self._container
        self._container = self._pid = None
        self._frames = self._last = self._peek = None
        if container is not None:
            container.close()

    # -- opening ------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        pid = os.getpid()
        if self._container is not None and self._pid == pid:
            return
        if self._container is not None:
            self._forget_inherited()
        container = _open_input(self.path)
        stream = container.streams.video[0]
        cc = stream.codec_context
        # Frame threading makes each random access decode several frames before the first one
        # comes out; intra-only FFV1 (every frame a keyframe) gains nothing from it: measured on
        # the sample, random depth reads ran 78 frames/s with AUTO and 190 with SLICE. dav1d's
        # own threading helps AV1 (375 vs 295 frames/s), so keep AUTO for the rest.
        cc.thread_type = "SLICE" if cc.name in INTRA_ONLY_CODECS else "AUTO"
        cc.thread_count = self.thread_count
        self._container, self._stream, self._pid = container, stream, pid
        self._tb = Fraction(stream.time_base)
        rate = _stream_rate(stream)
        self._fps = float(rate) if rate else 30.0
        self._start_pts = int(stream.start_time) if stream.start_time is not None else 0
        self._start_s = float(self._start_pts * self._tb)
        self._gop = self._mean_gop(stream)

    @staticmethod
    def _mean_gop(stream: Any) -> float:
        try:
            entries = stream.index_entries
            n = len(entries)
            keys = sum(1 for e in entries if e.is_keyframe)
        except Exception:       # index not available for this container: assume a short GOP
            return 2.0
        return n / keys if keys else float(max(n, 1))

    # -- decoding -----------------------------------------------------------------------------

    def _next(self) -> _Frame | None:
        if self._peek is not None:
            f, self._peek = self._peek, None
            return f
        if self._frames is None:
            return None
        try:
            frame = next(self._frames)
        except StopIteration:
            self._frames = None
            return None
        except av.FFmpegError as e:
            self._frames = None
            raise DatasetError(self.path, "video", f"decode error: {_one_line(e)}") from None
        pts = frame.pts
        if pts is None:
            raise DatasetError(self.path, "video", "decoded frame without pts")
        return _Frame(float(pts * self._tb), int(pts), frame)

    def _seek(self, t0: float) -> None:
        """Position the decoder so that the next frame is at or before ``t0`` (or the first)."""
        back = 0.0
        while True:
            target_s = t0 - back
            if target_s <= self._start_s:
                target = self._start_pts
            else:
                # i/fps as a float can sit a hair below frame i's exact tick: without the
                # 1/100-tick slack the seek lands one keyframe early and decodes a frame extra.
                target = math.floor(Fraction(target_s) / self._tb + Fraction(1, 100))
            try:
                self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            except (av.FFmpegError, OSError) as e:
                raise DatasetError(self.path, "video", f"seek to {t0}s failed: {_one_line(e)}") from None
            self._frames = self._container.decode(self._stream)
            self._last = self._peek = None
            first = self._next()
            self._peek = first
            at_start = target <= self._start_pts
            if first is None:
                if at_start:
                    return
            elif first.time <= t0 + _EPS_S or first.pts <= self._start_pts or at_start:
                return
            # landed after t0: the keyframe index is in decode order, or leading frames of an
            # open GOP were dropped. Go further back.
            back = max(2.0 * back, 2.0 / self._fps)

    def _can_continue(self, t0: float, tol: float) -> bool:
        last = self._last
        if last is None:
            return False
        frame_s = 1.0 / self._fps
        if t0 < last.time - min(tol, 0.25 * frame_s) - _EPS_S:
            return False
        # decoding forward costs a frame per frame skipped; a seek costs up to a GOP
        return (t0 - last.time) * self._fps <= max(4.0, self._gop + 1.0)

    def _match(self, times: np.ndarray, tol: float) -> list[_Frame]:
        """Nearest decoded frame to each of the sorted ``times``.

        Decodes forward, seeking first (and again whenever the next request is far ahead) so that
        one call for two distant times does not decode everything in between.
        """
        out: list[_Frame] = []
        k, n = 0, len(times)
        sought = -1     # the request we last sought to: after that, decode forward to it
        while k < n:
            if sought != k and not self._can_continue(float(times[k]), tol):
                self._seek(float(times[k]))
                sought = k
            prev = self._last
            while k < n and prev is not None and times[k] <= prev.time:
                out.append(prev)
                k += 1
            if k == n:
                break
            cur = self._next()
            if cur is None:         # end of file: the last frame is the nearest to what is left
                if prev is None:
                    raise DatasetError(self.path, "video", "no frames could be decoded")
                out.extend([prev] * (n - k))
                break
            # A request within the tolerance of ``cur`` is ``cur``: stopping here saves decoding
            # the next frame just to find it farther away (parquet timestamps are float32, so
            # i/fps differs from the frame's pts time in the last bits).
            near = min(tol, 0.25 / self._fps)
            while k < n and times[k] <= cur.time + near:
                t = times[k]
                out.append(prev if prev is not None and t - prev.time < cur.time - t else cur)
                k += 1
            self._last = cur
        return out

    def frames_at(self, timestamps: Sequence[float], tolerance_s: float = 1e-4) -> np.ndarray:
        """Frames nearest to ``timestamps`` (seconds), in the order asked.

        RGB -> (N, H, W, 3) uint8; depth -> (N, H, W) uint16 (millimetres; LeRobot's 12-bit
        codes are dequantised when ``quantization`` is given). A timestamp farther than
        ``tolerance_s`` from every frame raises ``DatasetError``.
        """
        times = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if self._pid is not None and self._pid != os.getpid():
            self._forget_inherited()    # also replaces the lock: one held at fork stays held here
        with self._lock:
            self._ensure_open()
            if times.size == 0:
                return self._empty()
            if not np.all(np.isfinite(times)):
                raise ValueError(f"{self.path}: timestamps must be finite, got {times.tolist()}")
            order = np.argsort(times, kind="stable")
            sorted_times = times[order]
            try:
                matched = self._match(sorted_times, tolerance_s)
            except BaseException:
                # the decoder's position is unknown now: make the next call seek
                self._frames = self._last = self._peek = None
                raise
            result: np.ndarray | None = None
            for j, (t, f) in enumerate(zip(sorted_times, matched)):
                if abs(f.time - t) > tolerance_s:
                    raise DatasetError(self.path, "timestamp", f"no frame within {tolerance_s}s of "
                                                               f"{float(t)}s (nearest {f.time}s)")
                arr = f.array(self.quantization)
                if result is None:
                    result = np.empty((len(times),) + arr.shape, dtype=arr.dtype)
                result[order[j]] = arr
            assert result is not None
            return result

    def _empty(self) -> np.ndarray:
        cc = self._stream.codec_context
        fmt = cc.format.name if cc.format else ""
        if fmt.startswith("gray"):
            dtype = np.uint8 if fmt == "gray" else np.uint16
            return np.empty((0, cc.height, cc.width), dtype=dtype)
        return np.empty((0, cc.height, cc.width, 3), dtype=np.uint8)


def decode_all(path: Path | str, quantization: DepthQuantization | None = None) -> np.ndarray:
    """Every frame in presentation order: (N, H, W, 3) uint8 or (N, H, W) uint16."""
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frames.append(_Frame(0.0, 0, frame).array(quantization))
        except (av.FFmpegError, ValueError) as e:
            raise DatasetError(path, "video", f"decode error after {len(frames)} frames: "
                                              f"{_one_line(e)}") from None
        declared = int(stream.frames or 0)
    finally:
        container.close()
    if not frames:
        raise DatasetError(path, "video", "no frames")
    if declared and len(frames) != declared:
        raise DatasetError(path, "video", f"the index lists {declared} frames but {len(frames)} "
                                          f"could be decoded (truncated or corrupt?)")
    return np.stack(frames)
