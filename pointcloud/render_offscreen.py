"""Open3D offscreen rendering of coloured point clouds: backend check, renderer reuse, camera placement.

Helper of :mod:`pointcloud.render`. Open3D 0.20's Linux wheel renders through Filament, and Filament
resolves its backend to **Vulkan** on Linux whether or not a display exists (measured: the same
``FEngine resolved backend: Vulkan`` with and without an X server). Without a display it needs no X,
no EGL platform variable and no ``OPEN3D_CPU_RENDERING``; on a machine without a GPU it runs on Mesa's
lavapipe (llvmpipe for Vulkan). The system needs:

* ``libvulkan1``: the Vulkan loader. Without it ``OffscreenRenderer`` raises
  ``RuntimeError: Failed to load vulkan library!``.
* ``mesa-vulkan-drivers``: an ICD (lavapipe) for the loader. Without any ICD Filament does not raise
  but *aborts the whole process* (``utils::PostconditionPanic ... Unable to create Vulkan instance``),
  which is why :func:`check_render_backend` probes the loader itself through ``ctypes`` first.

The renderer is reused between images of one size: creating one costs ~0.5-1 s on CPU and Filament
keeps a single engine per process anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

SYSTEM_PACKAGES = ("libvulkan1", "mesa-vulkan-drivers")
"""Debian packages that Open3D's offscreen renderer needs beyond Open3D's own (see module docstring)."""

_VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1
_VK_SUCCESS = 0
_VK_INCOMPLETE = 5


class RenderBackendError(RuntimeError):
    """Open3D's offscreen renderer cannot run on this machine (no Vulkan loader or no Vulkan device)."""


class _VkInstanceCreateInfo(ctypes.Structure):
    _fields_ = [
        ("sType", ctypes.c_uint32),
        ("pNext", ctypes.c_void_p),
        ("flags", ctypes.c_uint32),
        ("pApplicationInfo", ctypes.c_void_p),
        ("enabledLayerCount", ctypes.c_uint32),
        ("ppEnabledLayerNames", ctypes.c_void_p),
        ("enabledExtensionCount", ctypes.c_uint32),
        ("ppEnabledExtensionNames", ctypes.c_void_p),
    ]


def _missing(reason: str) -> RenderBackendError:
    pkgs = " ".join(SYSTEM_PACKAGES)
    return RenderBackendError(
        f"Open3D's offscreen renderer needs Vulkan, which is not usable here: {reason}. "
        f"On Debian/Ubuntu install the loader and Mesa's CPU driver: `sudo apt-get install -y {pkgs}` "
        "(no GPU or display needed)."
    )


@functools.lru_cache(maxsize=1)
def vulkan_device_count() -> int:
    """Number of Vulkan physical devices the loader sees; raises :class:`RenderBackendError` when none.

    Creates and destroys a bare Vulkan instance, exactly the step that aborts Filament when no ICD is
    installed. Cached: the answer does not change within a process.
    """
    name = ctypes.util.find_library("vulkan") or "libvulkan.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as err:
        raise _missing(f"the Vulkan loader ({name}) cannot be loaded ({err})") from err
    create, enumerate_, destroy = lib.vkCreateInstance, lib.vkEnumeratePhysicalDevices, lib.vkDestroyInstance
    create.restype = enumerate_.restype = ctypes.c_int32
    create.argtypes = [ctypes.POINTER(_VkInstanceCreateInfo), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    enumerate_.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
    destroy.restype = None
    destroy.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    info = _VkInstanceCreateInfo(sType=_VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO)
    instance = ctypes.c_void_p()
    result = create(ctypes.byref(info), None, ctypes.byref(instance))
    if result != _VK_SUCCESS:
        raise _missing(f"vkCreateInstance returned {result} (no Vulkan driver/ICD installed?)")
    try:
        count = ctypes.c_uint32(0)
        result = enumerate_(instance, ctypes.byref(count), None)
    finally:
        destroy(instance, None)
    if result not in (_VK_SUCCESS, _VK_INCOMPLETE) or count.value == 0:
        raise _missing(f"no Vulkan physical device (vkEnumeratePhysicalDevices returned {result})")
    return int(count.value)


def check_render_backend() -> None:
    """Raise :class:`RenderBackendError` with the packages to install when offscreen rendering cannot work."""
    vulkan_device_count()


# ---------------------------------------------------------------------------------------------- camera


@dataclass(frozen=True)
class CameraPose:
    """A look-at camera in the scene frame (metres, z-up) with a vertical field of view in degrees."""

    center: np.ndarray  # (3,) float64, the point looked at
    eye: np.ndarray  # (3,) float64, camera position
    up: np.ndarray  # (3,) float64, image-up direction
    fov_deg: float
    near: float
    far: float


VIEWS = ("auto", "top", "overview")


def _bounds(points: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    if robust and len(points) > 100:
        # A few stray far-away points (reconstruction noise) must not shrink the whole scene on screen.
        return np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
    return points.min(axis=0), points.max(axis=0)


def compute_camera(
    coord: np.ndarray,
    focus: np.ndarray,
    view: str = "auto",
    aspect: float = 4 / 3,
    fov_deg: float = 50.0,
    elevation_deg: float = 55.0,
) -> CameraPose:
    """Place a z-up camera that frames the focus points inside the scene.

    Args:
        coord: (N, 3) float, metres, z-up; the whole scene.
        focus: (N,) bool; the points to frame (union of prediction and ground truth). When empty, or for
            ``view="overview"``, the whole scene is framed.
        view: ``"auto"`` oblique top-down view of the focus from the scene's interior side (so walls
            behind the object do not hide it), ``"top"`` straight down on the focus (+y is image-up),
            ``"overview"`` oblique view of the whole scene.
        aspect: image width / height, used so the framed sphere also fits horizontally.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    pts = np.asarray(coord, dtype=np.float64)
    focus = np.asarray(focus, dtype=bool)
    if focus.shape != (len(pts),):
        raise ValueError(f"focus must be a (N,) bool mask with N = {len(pts)}, got shape {focus.shape}")
    scene_lo, scene_hi = _bounds(pts, robust=True)
    scene_center = (scene_lo + scene_hi) / 2
    whole = view == "overview" or not focus.any()
    lo, hi = (scene_lo, scene_hi) if whole else _bounds(pts[focus], robust=False)
    center = (lo + hi) / 2
    # Framed radius: the focus' bounding sphere, widened so the object is seen in its surroundings and
    # never smaller than half a metre (a tiny object alone on screen says little about where it is).
    radius = max(0.5 * float(np.linalg.norm(hi - lo)) * (1.0 if whole else 1.25), 0.5)
    half_fov = math.radians(fov_deg) / 2
    half_fov_min = min(half_fov, math.atan(math.tan(half_fov) * aspect))
    dist = radius / math.sin(half_fov_min)

    if view == "top":
        direction, up = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    else:
        horiz = (scene_center - center)[:2]
        if whole or np.linalg.norm(horiz) < 0.25:
            horiz = np.array([-1.0, -1.5])  # fixed south-west-ish view when there is no inside to look from
        horiz = horiz / np.linalg.norm(horiz)
        el = math.radians(elevation_deg)
        direction = np.array([horiz[0] * math.cos(el), horiz[1] * math.cos(el), math.sin(el)])
        up = np.array([0.0, 0.0, 1.0])
    eye = center + direction * dist
    scene_diag = float(np.linalg.norm(scene_hi - scene_lo))
    # Explicit near/far covering the whole scene from the eye, so nothing in view is clipped whatever
    # bounding-box heuristics the renderer would otherwise use.
    return CameraPose(center, eye, up, fov_deg, near=0.05, far=dist + 2 * scene_diag + 10.0)


# -------------------------------------------------------------------------------------------- renderer

_lock = threading.Lock()
_renderers: dict[tuple[int, int], object] = {}


@contextmanager
def offscreen_renderer(width: int, height: int) -> Iterator[object]:
    """Yield an empty ``open3d.visualization.rendering.OffscreenRenderer`` of this size (reused, locked).

    Post-processing is switched off so that unlit colours reach the PNG unchanged (Filament's default
    tone mapping turns white into (230, 226, 220) and would make colour checks meaningless).
    """
    check_render_backend()
    import open3d as o3d
    from open3d.visualization import rendering

    with _lock:
        key = (int(width), int(height))
        renderer = _renderers.get(key)
        if renderer is None:
            # Keep one renderer at a time: each holds GPU (or lavapipe) buffers of its size.
            _renderers.clear()
            # Headless, Open3D warns that GLFW found no X server before it falls back to offscreen mode:
            # expected here, so only errors are shown while the renderer is created.
            with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
                renderer = rendering.OffscreenRenderer(key[0], key[1])
            renderer.scene.view.set_post_processing(False)
            _renderers[key] = renderer
        try:
            yield renderer
        finally:
            renderer.scene.clear_geometry()


def render_point_layers(
    layers: list[tuple[np.ndarray, np.ndarray, float]],
    camera: CameraPose,
    width: int,
    height: int,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Render point layers with Open3D (Filament, offscreen) and return the (height, width, 3) uint8 RGB image.

    Args:
        layers: ``(xyz (M, 3) float metres, rgb (M, 3) float in [0, 1], point size in pixels)`` each; unlit
            shading, so every point shows its own colour exactly.
        camera: from :func:`compute_camera`.
        background: RGB in [0, 1].
    """
    import open3d as o3d
    from open3d.visualization import rendering

    with offscreen_renderer(width, height) as renderer:
        scene = renderer.scene
        scene.set_background([*background, 1.0])
        for i, (xyz, rgb, size) in enumerate(layers):
            if len(xyz) == 0:
                continue
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, dtype=np.float64)))
            cloud.colors = o3d.utility.Vector3dVector(np.asarray(rgb, dtype=np.float64))
            material = rendering.MaterialRecord()
            material.shader = "defaultUnlit"
            material.point_size = float(size)
            scene.add_geometry(f"layer{i}", cloud, material)
        cam = scene.camera
        cam.set_projection(camera.fov_deg, width / height, camera.near, camera.far, rendering.Camera.FovType.Vertical)
        cam.look_at(camera.center, camera.eye, camera.up)
        image = np.asarray(renderer.render_to_image())
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)
