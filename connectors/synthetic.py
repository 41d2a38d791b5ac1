"""Procedural video with exact panoptic ground truth.

The scenes are the training data of the small EoMT segstream ships, the demo's sample video, and
the held-out material it is evaluated on. They aim to look like video (textured ground, moving,
rotating, occluding objects, sensor noise, lighting drift) while keeping every class decidable
from local appearance: a thing's class shows in its outline and its pattern, a stuff class in its
texture.

Four thing classes (disc, box, triangle, star) move over a background of two to four stuff bands
(sky, grass, sand, water) whose wavy borders drift. Everything is drawn with numpy and OpenCV from
one ``numpy.random.Generator(PCG64(seed))``: the same seed and parameters give byte-identical
frames and ground truth.
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from segstream.connectors.errors import SourceError
from segstream.connectors.frame_rate import FrameRateCap
from segstream.connectors.frames import Frame
from segstream.models.processing import frame_label_map
from segstream.models.results import NO_TRACK, FrameResult, Segments

LABEL_SET = "synthetic"


@dataclass(frozen=True, slots=True)
class SceneClass:
    """One class of the synthetic label set (``models/labels/synthetic.json`` lists the same)."""

    id: int
    name: str
    isthing: bool


CLASSES: tuple[SceneClass, ...] = (
    SceneClass(0, "disc", True),
    SceneClass(1, "box", True),
    SceneClass(2, "triangle", True),
    SceneClass(3, "star", True),
    SceneClass(4, "sky", False),
    SceneClass(5, "grass", False),
    SceneClass(6, "sand", False),
    SceneClass(7, "water", False),
)
DISC, BOX, TRIANGLE, STAR, SKY, GRASS, SAND, WATER = range(8)
THING_IDS = (DISC, BOX, TRIANGLE, STAR)
STUFF_IDS = (SKY, GRASS, SAND, WATER)


# Sizes and speeds are fractions of the frame so a scene looks the same at any resolution; the
# texture grain follows the frame height so a downscaled 1080p frame resembles a 240p one.
_GRAIN_HEIGHT = 240
_MIN_RADIUS, _MAX_RADIUS = 1 / 10, 1 / 5  # circumradius / frame height: size 1/5..2/5 of H
_MAX_THINGS = 6
_MIN_THINGS = 3
# A thing whose visible area is under this share of the frame (64 px at 640x480) is left out.
_MIN_VISIBLE_SHARE = 64 / (640 * 480)
_CODE_THINGS = len(CLASSES)  # per-pixel codes: stuff class id, or this + index of a drawn thing
_NOISE_MARGIN = 32  # px of slack in the shared sensor-noise field for per-frame offsets


@dataclass(slots=True)
class _Border:
    """The border under one stuff band: y = base + tilt (x - W/2) + drift + waves, in pixels."""

    base: float
    drift: float
    drift_rate: float  # rad/s
    drift_phase: float
    waves: np.ndarray  # rows of (amplitude px, wavenumber rad/px, phase rad, phase speed rad/s)


@dataclass(slots=True)
class _Band:
    """One stuff band: a texture larger than the frame that slides back and forth under it."""

    class_id: int
    texture: np.ndarray  # (H + 2 margin) x (W + 2 margin) x 3 uint8
    sway: np.ndarray  # (amplitude px, rate rad/s, phase rad) for x, then for y


@dataclass(slots=True)
class _Thing:
    """One moving object. Positions in pixels, velocities in px/s, angles in radians."""

    track_id: int
    class_id: int
    outline: np.ndarray  # N x 2 polygon around the origin, circumradius 1
    texture: np.ndarray  # T x T x 3 uint8, the object's unit disc scaled to `radius` px
    radius: float  # circumradius at rest, px
    pulse: tuple[float, float, float]  # relative amplitude, rate rad/s, phase: size change
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    spin: float  # rad/s
    depth: float  # larger is nearer the camera
    born: float  # seconds
    entered: bool  # has been inside the frame; leaving it then ends its life


class SyntheticScene:
    """An endless, deterministic synthetic video; ``render()`` returns the next frame and its truth.

    Construction draws the scene (bands, textures, first objects) and is cheap; each ``render()``
    advances one frame of ``1 / fps`` seconds. Frames are RGB uint8, ``height x width x 3``.

    Ground-truth rule for small things: a thing whose visible area (inside the frame, not covered by
    nearer things) is below ``min_area`` pixels is not drawn in that frame at all, so its pixels
    show, and are labelled as, whatever lies beneath. Anti-aliased edges are blended in the image;
    a pixel belongs to the nearest thing covering at least half of it.
    """

    def __init__(self, width: int = 640, height: int = 480, fps: float = 25.0, seed: int = 0):
        if width < 16 or height < 16:
            raise SourceError(f"synthetic video must be at least 16x16 pixels, got {width}x{height}")
        if not fps > 0:
            raise SourceError(f"synthetic video needs a positive frame rate, got {fps}")
        self.width = int(width)
        self.height = int(height)
        self.fps = float(fps)
        self.seed = int(seed)
        self.min_area = max(4, round(_MIN_VISIBLE_SHARE * self.width * self.height))
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._grain = max(1.0, self.height / _GRAIN_HEIGHT)
        self._rows = np.arange(self.height, dtype=np.float32)[:, None]
        self._columns = np.arange(self.width, dtype=np.float32) - self.width / 2
        self._index = 0
        self._next_track = 1
        self._blur_left = 0  # frames left in the current blur episode
        self._blur_sigma = 0.0
        self._noise = _sensor_noise_field(self.height, self.width)
        self._choose_camera()
        self._choose_background()
        self._target = int(self._rng.integers(_MIN_THINGS, _MAX_THINGS + 1))
        self._things = [self._new_thing(0.0, inside=True) for _ in range(self._target)]

    @property
    def frame_index(self) -> int:
        """Index of the frame the next ``render()`` returns."""
        return self._index

    def render(self) -> tuple[np.ndarray, FrameResult]:
        """Draw the current frame and its ground truth, then advance the scene by one frame.

        The truth's label map gives every pixel a segment; segment ids are 0..S-1 in row order:
        stuff first (one segment per stuff class present, by class id), then things by track id.
        Things carry their lifetime ``track_ids`` (stuff: ``NO_TRACK``).
        """
        t = self._index / self.fps
        canvas, stuff = self._draw_stuff(t)
        placed = self._place_things(t)
        code = self._code_map(stuff, placed)
        areas = np.bincount(code.ravel(), minlength=_CODE_THINGS + len(placed))
        hidden = [j for j in range(len(placed)) if areas[_CODE_THINGS + j] < self.min_area]
        if hidden:
            placed = [p for j, p in enumerate(placed) if j not in hidden]
            code = self._code_map(stuff, placed)
            areas = np.bincount(code.ravel(), minlength=_CODE_THINGS + len(placed))
        for thing, box, alpha in placed:
            self._paint(canvas, thing, box, alpha, t)
        truth = self._truth(code, areas, placed, self._index)
        image = self._camera(canvas, t)
        self._advance(t)
        return image, truth

    # --- scene layout ---------------------------------------------------------------------------

    def _choose_camera(self) -> None:
        rng = self._rng
        self._noise_sigma = float(rng.uniform(1.5, 4.5))
        self._cast = rng.uniform(0.95, 1.05, 3)
        # (amplitude, rate rad/s, phase) of brightness, contrast, and per-channel colour drift.
        self._brightness = (rng.uniform(0.03, 0.12), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * math.pi))
        self._contrast = (rng.uniform(0.02, 0.1), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * math.pi))
        self._tint = np.stack([rng.uniform(0.0, 0.04, 3), rng.uniform(0.1, 0.4, 3), rng.uniform(0, 2 * math.pi, 3)])

    def _choose_background(self) -> None:
        rng, h, w = self._rng, self.height, self.width
        count = int(rng.integers(2, 5))
        spacing = h / count
        self._tilt = float(rng.uniform(-0.12, 0.12))
        # Each border stays within 0.39 spacings of its place, so no band is ever pinched shut.
        self._borders = []
        for i in range(1, count):
            waves = np.array(
                [
                    [
                        rng.uniform(0.04, 0.12) * spacing,
                        2 * math.pi / (rng.uniform(0.4, 1.2) * w),
                        rng.uniform(0, 2 * math.pi),
                        rng.choice([-1, 1]) * rng.uniform(0.2, 0.8),
                    ],
                    [
                        rng.uniform(0.01, 0.04) * spacing,
                        2 * math.pi / (rng.uniform(0.1, 0.3) * w),
                        rng.uniform(0, 2 * math.pi),
                        rng.choice([-1, 1]) * rng.uniform(0.5, 1.5),
                    ],
                ]
            )
            self._borders.append(
                _Border(
                    base=(i + rng.uniform(-0.15, 0.15)) * spacing,
                    drift=rng.uniform(0.0, 0.08) * spacing,
                    drift_rate=rng.uniform(0.1, 0.3),
                    drift_phase=rng.uniform(0, 2 * math.pi),
                    waves=waves,
                )
            )
        self._margin = max(4, round(0.04 * max(h, w)))
        classes = [int(rng.choice(STUFF_IDS))]
        for _ in range(1, count):
            classes.append(int(rng.choice([c for c in STUFF_IDS if c != classes[-1]])))
        self._bands = [self._new_band(c) for c in classes]
        self._band_class = np.zeros(256, dtype=np.uint8)  # band index -> stuff class, for cv2.LUT
        self._band_class[:count] = classes

    def _new_band(self, class_id: int) -> _Band:
        rng, m = self._rng, self._margin
        th, tw = self.height + 2 * m, self.width + 2 * m
        paint = {SKY: _sky, GRASS: _grass, SAND: _sand, WATER: _water}[class_id]
        texture = paint(rng, th, tw, self.height, self._grain)
        # Water swells faster and mostly up and down; the other grounds creep.
        fast = class_id == WATER
        sway = np.array(
            [
                m * rng.uniform(0.3, 1.0),
                rng.uniform(0.05, 0.2),
                rng.uniform(0, 2 * math.pi),
                m * rng.uniform(0.5, 1.0) if fast else m * rng.uniform(0.2, 0.8),
                rng.uniform(0.4, 0.9) if fast else rng.uniform(0.05, 0.2),
                rng.uniform(0, 2 * math.pi),
            ]
        )
        return _Band(class_id, texture, sway)

    def _new_thing(self, t: float, inside: bool) -> _Thing:
        rng, w, h = self._rng, self.width, self.height
        class_id = int(rng.choice(THING_IDS))
        radius = float(rng.uniform(_MIN_RADIUS, _MAX_RADIUS) * h)
        speed = (w + h) / 2 / rng.uniform(3.0, 9.0)
        if inside:
            x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            heading = rng.uniform(0, 2 * math.pi)
        else:
            side = int(rng.choice(4, p=[0.35, 0.35, 0.15, 0.15]))
            along = rng.uniform(0.15, 0.85)
            # Start just outside the border, heading inwards within +-35 degrees of its normal.
            x, y, inward = (
                (-radius, along * h, 0.0),
                (w + radius, along * h, math.pi),
                (along * w, -radius, math.pi / 2),
                (along * w, h + radius, -math.pi / 2),
            )[side]
            heading = inward + rng.uniform(-0.6, 0.6)
        thing = _Thing(
            track_id=self._next_track,
            class_id=class_id,
            outline=_outline(rng, class_id),
            texture=_thing_texture(rng, class_id, radius, self._grain),
            radius=radius,
            pulse=(float(rng.uniform(0.0, 0.2)), float(rng.uniform(0.3, 1.5)), float(rng.uniform(0, 2 * math.pi))),
            x=float(x),
            y=float(y),
            vx=float(speed * math.cos(heading)),
            vy=float(speed * math.sin(heading)),
            angle=float(rng.uniform(0, 2 * math.pi)),
            spin=float(rng.uniform(-1.2, 1.2)),
            depth=float(rng.random()),
            born=t,
            entered=inside,
        )
        self._next_track += 1
        return thing

    # --- one frame --------------------------------------------------------------------------------

    def _draw_stuff(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The background image and its per-pixel stuff class (uint8)."""
        h, w = self.height, self.width
        band = np.zeros((h, w), dtype=np.uint8)
        for border in self._borders:
            drift = border.drift * math.sin(border.drift_rate * t + border.drift_phase)
            y = border.base + drift + self._tilt * self._columns
            for amplitude, wavenumber, phase, speed in border.waves:
                y = y + amplitude * np.sin(wavenumber * self._columns + (phase + speed * t))
            band += self._rows >= y.astype(np.float32)[None, :]
        canvas = np.empty((h, w, 3), dtype=np.uint8)
        for i, b in enumerate(self._bands):
            ax, rx, px, ay, ry, py = b.sway
            ox = self._margin + round(ax * math.sin(rx * t + px))
            oy = self._margin + round(ay * math.sin(ry * t + py))
            view = b.texture[oy : oy + h, ox : ox + w]
            if i == 0:
                canvas[:] = view
            else:
                cv2.copyTo(view, (band == i).view(np.uint8), canvas)
        return canvas, cv2.LUT(band, self._band_class)

    def _place_things(self, t: float) -> list[tuple[_Thing, tuple[int, int, int, int], np.ndarray]]:
        """Things inside the frame, far to near: (thing, (x0, y0, x1, y1) box, 0..255 coverage)."""
        placed = []
        for thing in sorted(self._things, key=lambda th: th.depth):
            radius = self._radius_at(thing, t)
            c, s = math.cos(thing.angle), math.sin(thing.angle)
            points = thing.outline @ np.array([[c, s], [-s, c]]) * radius + (thing.x, thing.y)
            x0 = max(0, math.floor(points[:, 0].min()) - 1)
            y0 = max(0, math.floor(points[:, 1].min()) - 1)
            x1 = min(self.width, math.ceil(points[:, 0].max()) + 2)
            y1 = min(self.height, math.ceil(points[:, 1].max()) + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            thing.entered = True
            coverage = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
            fixed = np.round((points - (x0, y0)) * 16).astype(np.int32)  # 4 fractional bits
            cv2.fillPoly(coverage, [fixed], 255, lineType=cv2.LINE_AA, shift=4)
            placed.append((thing, (x0, y0, x1, y1), coverage))
        return placed

    def _code_map(self, stuff: np.ndarray, placed: list) -> np.ndarray:
        """Per pixel: the stuff class id, or _CODE_THINGS + index into ``placed`` of the nearest thing."""
        code = stuff.copy()
        for j, (_, (x0, y0, x1, y1), coverage) in enumerate(placed):
            code[y0:y1, x0:x1][coverage >= 128] = _CODE_THINGS + j
        return code

    def _paint(
        self, canvas: np.ndarray, thing: _Thing, box: tuple[int, int, int, int], coverage: np.ndarray, t: float
    ) -> None:
        x0, y0, x1, y1 = box
        # Map each box pixel back into the texture tile: undo translation, rotation and size.
        k = thing.radius / self._radius_at(thing, t)
        c, s = math.cos(thing.angle), math.sin(thing.angle)
        a = k * np.array([[c, s], [-s, c]])
        centre = (thing.texture.shape[0] - 1) / 2
        offset = centre - a @ np.array([thing.x - x0, thing.y - y0])
        matrix = np.hstack([a, offset[:, None]])
        texture = cv2.warpAffine(
            thing.texture,
            matrix,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        region = canvas[y0:y1, x0:x1]
        alpha = coverage.astype(np.float32)[:, :, None] * (1 / 255)
        blended = region + (texture.astype(np.float32) - region) * alpha
        region[:] = (blended + 0.5).astype(np.uint8)

    def _truth(self, code: np.ndarray, areas: np.ndarray, placed: list, index: int) -> FrameResult:
        lookup = np.full(256, -1, dtype=np.int32)
        rows: list[tuple[int, bool, int, int]] = []  # class id, isthing, track id, area
        for class_id in STUFF_IDS:
            if areas[class_id]:
                lookup[class_id] = len(rows)
                rows.append((class_id, False, NO_TRACK, int(areas[class_id])))
        order = sorted(range(len(placed)), key=lambda j: placed[j][0].track_id)
        for j in order:
            thing = placed[j][0]
            lookup[_CODE_THINGS + j] = len(rows)
            rows.append((thing.class_id, True, thing.track_id, int(areas[_CODE_THINGS + j])))
        return truth_result(cv2.LUT(code, lookup), rows, index)

    def _camera(self, canvas: np.ndarray, t: float) -> np.ndarray:
        """Optics and sensor: occasional blur, lighting and colour drift, noise."""
        rng = self._rng
        if self._blur_left == 0 and rng.random() < 0.15 / self.fps:
            self._blur_left = max(1, round(rng.uniform(0.2, 1.0) * self.fps))
            self._blur_sigma = float(rng.uniform(0.5, 1.2) * self._grain)
        if self._blur_left:
            canvas = cv2.GaussianBlur(canvas, (0, 0), self._blur_sigma)
            self._blur_left -= 1
        gain = 1 + self._brightness[0] * math.sin(self._brightness[1] * t + self._brightness[2])
        contrast = 1 + self._contrast[0] * math.sin(self._contrast[1] * t + self._contrast[2])
        amplitude, rate, phase = self._tint
        tint = self._cast * (1 + amplitude * np.sin(rate * t + phase)) * (1 + rng.normal(0, 0.005, 3))
        scale = gain * contrast * tint
        offset = 128 * (1 - contrast) * gain * tint
        matrix = np.zeros((3, 4))
        matrix[[0, 1, 2], [0, 1, 2]] = scale
        matrix[:, 3] = offset
        image = cv2.transform(canvas.astype(np.float32), matrix)
        oy, ox = rng.integers(0, _NOISE_MARGIN, 2)
        noise = self._noise[oy : oy + self.height, ox : ox + self.width]
        return cv2.addWeighted(image, 1.0, noise, self._noise_sigma, 0.0, dtype=cv2.CV_8U)

    def _advance(self, t: float) -> None:
        """Move everything by one frame; retire things that left, bring in new ones."""
        rng, dt = self._rng, 1 / self.fps
        alive = []
        for thing in self._things:
            box_seen = thing.entered
            if box_seen and not self._overlaps_frame(thing, t):
                continue
            # A thing that never made it in (grazing a corner) is retired after 20 s.
            if not box_seen and t - thing.born > 20:
                continue
            thing.x += thing.vx * dt
            thing.y += thing.vy * dt
            thing.angle += thing.spin * dt
            alive.append(thing)
        self._things = alive
        if rng.random() < dt / 8:
            self._target = int(rng.integers(_MIN_THINGS, _MAX_THINGS + 1))
        count = len(self._things)
        rate = 3.0 if count < _MIN_THINGS else 1.5 if count < self._target else 0.0
        if count < _MAX_THINGS and rng.random() < rate * dt:
            self._things.append(self._new_thing(t + dt, inside=False))
        self._index += 1

    def _overlaps_frame(self, thing: _Thing, t: float) -> bool:
        reach = self._radius_at(thing, t) + 2
        return -reach < thing.x < self.width + reach and -reach < thing.y < self.height + reach

    def _radius_at(self, thing: _Thing, t: float) -> float:
        amplitude, rate, phase = thing.pulse
        radius = thing.radius * (1 + amplitude * math.sin(rate * t + phase))
        return min(max(radius, _MIN_RADIUS * self.height), _MAX_RADIUS * self.height)


# --- textures and outlines ----------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _sensor_noise_field(height: int, width: int) -> np.ndarray:
    """Unit Gaussian noise a little larger than the frame, shared by all scenes of that size (each
    frame reads it at a random offset), so building a scene does not pay for drawing it."""
    rng = np.random.Generator(np.random.PCG64(0x5E45))
    field = rng.standard_normal((height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3), dtype=np.float32)
    field.flags.writeable = False
    return field


def _grain_noise(rng: np.random.Generator, h: int, w: int, grain: float) -> np.ndarray:
    """Unit Gaussian noise with features about ``grain`` pixels wide, float32 h x w."""
    if grain <= 1.0:
        return rng.standard_normal((h, w), dtype=np.float32)
    coarse = rng.standard_normal((math.ceil(h / grain) + 1, math.ceil(w / grain) + 1), dtype=np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Soft noise with blobs about ``scale`` pixels across, roughly unit amplitude."""
    coarse = rng.standard_normal((max(2, math.ceil(h / scale) + 1), max(2, math.ceil(w / scale) + 1)), dtype=np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _finish(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def _sky(rng: np.random.Generator, h: int, w: int, frame_height: int, grain: float) -> np.ndarray:
    """Smooth: a vertical gradient from deep blue to a pale horizon, with faint haze."""
    hue = rng.uniform(0.55, 0.63)
    top = _hsv(hue, rng.uniform(0.5, 0.8), rng.uniform(0.7, 0.95))
    horizon = _hsv(hue + rng.uniform(-0.02, 0.02), rng.uniform(0.1, 0.3), rng.uniform(0.9, 1.0))
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    haze = 1 + 0.04 * _smooth_noise(rng, h, w, frame_height / 3)[:, :, None]
    return _finish((top + (horizon - top) * ramp) * haze)


def _grass(rng: np.random.Generator, h: int, w: int, frame_height: int, grain: float) -> np.ndarray:
    """High-frequency green noise with short vertical blades and darker patches."""
    base = _hsv(rng.uniform(0.22, 0.33), rng.uniform(0.55, 0.85), rng.uniform(0.4, 0.7))
    fine = _grain_noise(rng, h, w, grain)
    blades = cv2.blur(_grain_noise(rng, h, w, grain), (1, max(3, round(5 * grain))))
    patches = _smooth_noise(rng, h, w, frame_height / 5)
    light = 1 + 0.2 * fine + 0.5 * blades + 0.1 * patches
    yellowing = np.array([1.0, 0.9, 0.6], dtype=np.float32) * 0.15 * patches[:, :, None]
    return _finish(base * light[:, :, None] * (1 + yellowing))


def _sand(rng: np.random.Generator, h: int, w: int, frame_height: int, grain: float) -> np.ndarray:
    """Yellow-beige with fine dark and light speckles and faint ripples."""
    base = _hsv(rng.uniform(0.10, 0.14), rng.uniform(0.3, 0.5), rng.uniform(0.72, 0.9))
    coarse = rng.random((math.ceil(h / grain), math.ceil(w / grain)), dtype=np.float32)
    speck = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_NEAREST)
    light = 1 + 0.05 * _grain_noise(rng, h, w, grain)
    light -= np.where(speck < 0.06, 0.35, 0.0).astype(np.float32)
    light += np.where(speck > 0.975, 0.18, 0.0).astype(np.float32)
    period = frame_height * rng.uniform(0.08, 0.15)
    angle = rng.uniform(0, math.pi)
    ys, xs = np.ogrid[0:h, 0:w]
    light += 0.04 * np.sin((xs * math.cos(angle) + ys * math.sin(angle)).astype(np.float32) * (2 * math.pi / period))
    return _finish(base * light[:, :, None])


def _water(rng: np.random.Generator, h: int, w: int, frame_height: int, grain: float) -> np.ndarray:
    """Blue-green with horizontal wave stripes and glints on the crests."""
    base = _hsv(rng.uniform(0.47, 0.58), rng.uniform(0.5, 0.85), rng.uniform(0.45, 0.75))
    period = frame_height * rng.uniform(0.03, 0.05)
    wobble = rng.uniform(1.0, 2.5)
    wavelength = w * rng.uniform(0.2, 0.5)
    ys, xs = np.ogrid[0:h, 0:w]
    sway = wobble * np.sin(xs * (2 * math.pi / wavelength) + rng.uniform(0, 2 * math.pi)).astype(np.float32)
    wave = np.sin(ys.astype(np.float32) * np.float32(2 * math.pi / period) + sway)
    light = 1 + 0.18 * wave + 0.03 * _grain_noise(rng, h, w, grain)
    glint = np.clip((wave - 0.8) * 5, 0, 1) * 40
    return _finish(base * light[:, :, None] + glint[:, :, None])


def _outline(rng: np.random.Generator, class_id: int) -> np.ndarray:
    """Polygon of a thing around the origin with circumradius 1, float64 N x 2."""
    if class_id == DISC:
        angles = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        return np.stack([np.cos(angles), rng.uniform(0.6, 1.0) * np.sin(angles)], axis=1)
    if class_id == BOX:
        corner = rng.uniform(math.atan(0.55), math.atan(1 / 0.55))
        a, b = math.cos(corner), math.sin(corner)
        return np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
    if class_id == TRIANGLE:
        angles = np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + np.array([0, *rng.uniform(-0.3, 0.3, 2)])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    angles = np.linspace(0, 2 * math.pi, 10, endpoint=False) - math.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# A thing class shows in its pattern and main hue as well as its outline (shape alone is too slow
# for a small model to learn from scratch on a CPU): rimmed red discs, checkered violet boxes,
# striped yellow triangles, mottled magenta stars. The darker second colour is any hue, so that
# objects of one class still look different from each other.
_PATTERN = {DISC: "rimmed", BOX: "checker", TRIANGLE: "stripes", STAR: "mottled"}
_HUES = {DISC: (-0.03, 0.03), BOX: (0.72, 0.79), TRIANGLE: (0.14, 0.18), STAR: (0.85, 0.92)}


def _thing_texture(rng: np.random.Generator, class_id: int, radius: float, grain: float) -> np.ndarray:
    """A thing's paint: its class's pattern (``_PATTERN``) in a bright hue of its class (``_HUES``)
    and a darker colour of any hue, lit from one side."""
    size = 2 * math.ceil(radius) + 5
    u, v = (np.mgrid[0:size, 0:size].astype(np.float32)[::-1] - (size - 1) / 2) / radius
    hue = rng.uniform(*_HUES[class_id])
    first = _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    second = _hsv(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.65))
    turn = rng.uniform(0, math.pi)
    along = u * math.cos(turn) + v * math.sin(turn)
    across = v * math.cos(turn) - u * math.sin(turn)
    style = _PATTERN[class_id]
    if style == "rimmed":
        mix = (np.hypot(u, v) < rng.uniform(0.55, 0.75)).astype(np.float32)
    elif style == "stripes":
        stripe = np.sin(along * (2 * math.pi / rng.uniform(0.25, 0.5)))
        mix = np.clip(0.5 + 2 * stripe, 0, 1)
    elif style == "checker":
        cell = rng.uniform(0.25, 0.45)
        mix = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    else:
        mix = np.clip(0.5 + 0.6 * _grain_noise(rng, size, size, max(grain, radius / 12)), 0, 1)
    paint = second + (first - second) * mix[:, :, None]
    light = rng.uniform(0, 2 * math.pi)
    shade = 1 + 0.12 * (u * math.cos(light) + v * math.sin(light))
    return _finish(paint * shade[:, :, None])


# --- clips, sources and files -------------------------------------------------------------------


def truth_result(label_map: np.ndarray, rows: list[tuple[int, bool, int, int]], index: int = 0) -> FrameResult:
    """Ground truth as a ``FrameResult``: segment i has id i and ``rows[i]`` = (class id,
    isthing, track id, area); boxes and centroids are measured on the label map."""
    height, width = label_map.shape
    class_ids = [r[0] for r in rows]
    _, _, boxes, centroids = frame_label_map(label_map, len(rows), (height, width))
    segments = Segments.build(
        ids=range(len(rows)),
        class_ids=class_ids,
        labels=[CLASSES[c].name for c in class_ids],
        isthing=[r[1] for r in rows],
        areas=[r[3] for r in rows],
        boxes=boxes,
        track_ids=[r[2] for r in rows],
        centroids=centroids,
    )
    return FrameResult(source="", index=index, width=width, height=height, segment_map=label_map, segments=segments)


def synthetic_clip(
    width: int, height: int, num_frames: int, seed: int, fps: float = 25.0
) -> Iterator[tuple[np.ndarray, FrameResult]]:
    """The first ``num_frames`` frames of the scene ``seed`` with their ground truth."""
    scene = SyntheticScene(width, height, fps, seed)
    for _ in range(num_frames):
        yield scene.render()


def sample_training_frame(seed: int, width: int, height: int, max_warmup: int = 50) -> tuple[np.ndarray, FrameResult]:
    """One frame of scene ``seed`` after a warm-up of 0..``max_warmup`` frames drawn from the seed,
    so frames of different seeds sit at different points of their scenes' lives."""
    warmup = int(np.random.Generator(np.random.PCG64([seed, 1])).integers(0, max_warmup + 1))
    scene = SyntheticScene(width, height, 25.0, seed)
    for _ in range(warmup):
        scene.render()
    return scene.render()


class SyntheticSource:
    """A ``VideoSource`` of one synthetic scene.

    ``num_frames=None`` runs until ``close()``. With ``realtime`` the frames are paced at ``fps``
    and the source is live. ``last_truth`` is the ground truth of the frame yielded last.
    """

    def __init__(
        self, name: str, width: int, height: int, fps: float, seed: int, num_frames: int | None, realtime: bool = False,
        max_fps: float | None = None,
    ):
        self.name = name
        self.cap = FrameRateCap(max_fps) if max_fps is not None else None
        self.live = realtime
        self.num_frames = num_frames
        self.last_truth: FrameResult | None = None
        self._scene = SyntheticScene(width, height, fps, seed)
        self._time_base = 1 / Fraction(fps).limit_denominator(1001)
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        fps = self._scene.fps
        start = time.monotonic()
        index = 0
        while not self._closed.is_set() and (self.num_frames is None or index < self.num_frames):
            if self.live:
                delay = start + index / fps - time.monotonic()
                if delay > 0 and self._closed.wait(delay):
                    return
            image, truth = self._scene.render()  # rendered even when left out: the scene moves on
            if self.cap is not None and not self.cap.keep(float(index * self._time_base)):
                index += 1
                continue
            truth.source = self.name
            self.last_truth = truth
            yield Frame(
                source=self.name,
                index=index,
                image=image,
                pts=index,
                time_base=self._time_base,
                pts_seconds=float(index * self._time_base),
                capture_wall=time.time(),
            )
            index += 1

    @property
    def frames_skipped(self) -> int:
        """Frames left out on purpose, over ``max_fps``."""
        return self.cap.skipped if self.cap is not None else 0

    def close(self) -> None:
        self._closed.set()


def write_clip(
    path_video: str | Path,
    path_truth: str | Path,
    width: int,
    height: int,
    num_frames: int,
    seed: int,
    fps: float = 25.0,
    crf: int = 18,
) -> None:
    """Encode scene ``seed`` as H.264 (yuv420p) into an mp4 and its ground truth into an .npz.

    The .npz holds ``panoptic`` (T x H x W int32) and ``meta``, a JSON string with the label set,
    fps, seed, size and each frame's segment list; ``load_truth`` reads it back.
    """
    if width % 2 or height % 2:
        raise SourceError(f"H.264 in yuv420p needs an even frame size, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1001)
    maps: list[np.ndarray] = []
    frames: list[list[dict]] = []
    try:
        with av.open(str(path_video), "w") as container:
            stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # PyAV converts RGB with BT.601, limited range: said in the stream, or an HD clip's untagged
            # colours are read as BT.709 (as players read them), 5 levels off
            stream.codec_context.colorspace, stream.codec_context.color_range = BT601_MATRIX, LIMITED_RANGE
            for index, (image, truth) in enumerate(synthetic_clip(width, height, num_frames, seed, fps)):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = index, 1 / rate
                frame.colorspace, frame.color_range = BT601_MATRIX, LIMITED_RANGE
                container.mux(stream.encode(frame))
                maps.append(truth.label_map)
                frames.append([_truth_row(segment) for segment in truth.segments])
            container.mux(stream.encode(None))
    except (OSError, av.FFmpegError) as error:
        raise SourceError(f"cannot write synthetic clip {path_video}: {error}") from error
    meta = {"label_set": LABEL_SET, "fps": fps, "seed": seed, "width": width, "height": height, "frames": frames}
    panoptic = np.stack(maps) if maps else np.zeros((0, height, width), dtype=np.int32)
    with open(path_truth, "wb") as out:
        np.savez_compressed(out, panoptic=panoptic, meta=np.array(json.dumps(meta)))


BT601_MATRIX, LIMITED_RANGE = 6, 1  # FFmpeg's AVCOL_SPC_SMPTE170M and AVCOL_RANGE_MPEG


def _truth_row(segment: dict) -> dict:
    return {key: segment[key] for key in ("id", "class_id", "isthing", "track_id", "area")}


def load_truth(path_truth: str | Path) -> list[FrameResult]:
    """The per-frame ground truth that ``write_clip`` stored."""
    try:
        with np.load(path_truth, allow_pickle=False) as data:
            panoptic = data["panoptic"]
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError) as error:
        raise SourceError(f"cannot read synthetic ground truth {path_truth}: {error}") from error
    return [
        truth_result(panoptic[i], [(r["class_id"], r["isthing"], r["track_id"], r["area"]) for r in rows], i)
        for i, rows in enumerate(meta["frames"])
    ]
