"""Face-like 55x47 RGB images, drawn with vectorised numpy: identities, poses and two drawn triggers.

Every function here is pure (arrays and a numpy Generator in, arrays out): an identity fixes a
face's appearance (shape, skin, hair, eyes, brows, nose, mouth, background); a pose fixes what
changes from photo to photo (a shift of a few pixels, scale, lighting, noise). The sunglasses trigger
is a pair of dark lenses with a bridge, drawn on the posed eyes, so it sits on the eyes in every photo;
the lipstick trigger (the 2020 competition's multi-trigger model has one) paints the posed mouth violet.
Both are drawn before lighting and noise, as a real accessory would be photographed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEIGHT, WIDTH = 55, 47
RENDER_CHUNK = 512


@dataclass(frozen=True)
class Identities:
    """Per-identity appearance; every field has one row per identity (colours: (k, 3))."""

    face_center: np.ndarray  # (k, 2) x, y
    face_radii: np.ndarray  # (k, 2) rx, ry
    skin: np.ndarray
    hair: np.ndarray
    hairline: np.ndarray  # (k,) share of the face height covered by hair
    eye_dx: np.ndarray
    eye_dy: np.ndarray  # eyes above the face centre
    eye_radii: np.ndarray  # (k, 2)
    iris: np.ndarray
    brow_gap: np.ndarray
    nose_length: np.ndarray
    mouth_dy: np.ndarray  # mouth below the face centre
    mouth_radii: np.ndarray  # (k, 2)
    lips: np.ndarray
    background: np.ndarray
    stripes: np.ndarray  # (k, 3) angle, spatial frequency, amplitude

    @property
    def count(self) -> int:
        return int(self.skin.shape[0])


@dataclass(frozen=True)
class Poses:
    """Per-image variation; one row per image."""

    shift: np.ndarray  # (n, 2) pixels
    scale: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    side_light: np.ndarray
    noise_seed: np.ndarray  # (n,) seeds of each image's own noise

    @property
    def count(self) -> int:
        return int(self.scale.shape[0])


def sample_identities(rng: np.random.Generator, count: int) -> Identities:
    """Draw `count` distinct-looking identities."""
    tone = rng.uniform(0.0, 1.0, count)
    skin = np.stack([95 + 135 * tone, 65 + 120 * tone, 45 + 105 * tone], axis=1) + rng.uniform(-15, 15, (count, 3))
    return Identities(
        face_center=np.stack([23 + rng.uniform(-1.5, 1.5, count), 29 + rng.uniform(-1.5, 1.5, count)], axis=1),
        face_radii=np.stack([rng.uniform(13, 18, count), rng.uniform(17, 23, count)], axis=1),
        skin=skin,
        hair=rng.uniform(15, 200, (count, 1)) * rng.uniform(0.6, 1.0, (count, 3)),
        hairline=rng.uniform(0.15, 0.4, count),
        eye_dx=rng.uniform(5, 8, count),
        eye_dy=rng.uniform(3, 7, count),
        eye_radii=np.stack([rng.uniform(1.6, 3.0, count), rng.uniform(1.0, 2.0, count)], axis=1),
        iris=rng.uniform(20, 140, (count, 3)),
        brow_gap=rng.uniform(3.0, 4.5, count),
        nose_length=rng.uniform(4, 8, count),
        mouth_dy=rng.uniform(7, 12, count),
        mouth_radii=np.stack([rng.uniform(3, 7, count), rng.uniform(1.0, 2.5, count)], axis=1),
        lips=np.stack([rng.uniform(120, 210, count), rng.uniform(40, 100, count), rng.uniform(40, 100, count)], axis=1),
        background=rng.uniform(30, 230, (count, 3)),
        stripes=np.stack(
            [rng.uniform(0, np.pi, count), rng.uniform(0.1, 0.6, count), rng.uniform(0, 40, count)], axis=1
        ),
    )


def sample_poses(rng: np.random.Generator, count: int) -> Poses:
    """Draw `count` photo conditions: shift, scale, lighting gain/offset/side light, noise."""
    return Poses(
        shift=rng.uniform(-2.5, 2.5, (count, 2)),
        scale=rng.uniform(0.94, 1.06, count),
        gain=rng.uniform(0.75, 1.25, count),
        offset=rng.uniform(-25, 25, count),
        side_light=rng.uniform(-0.2, 0.2, count),
        noise_seed=rng.integers(0, 2**63 - 1, count),
    )


def render(identities: Identities, labels: np.ndarray, poses: Poses, sunglasses: np.ndarray,
           lipstick: np.ndarray | None = None) -> np.ndarray:
    """Photos of identity labels[i] in pose i, wearing sunglasses where sunglasses[i] and lipstick where
    lipstick[i] (none by default): (n, 55, 47, 3) float32 0..255."""
    labels = np.asarray(labels, dtype=np.int64)
    sunglasses = np.asarray(sunglasses, dtype=bool)
    lipstick = np.zeros(len(labels), dtype=bool) if lipstick is None else np.asarray(lipstick, dtype=bool)
    if not (len(labels) == poses.count == len(sunglasses) == len(lipstick)):
        raise ValueError("labels, poses, sunglasses and lipstick must describe the same number of images")
    out = np.empty((len(labels), HEIGHT, WIDTH, 3), dtype=np.float32)
    for start in range(0, len(labels), RENDER_CHUNK):
        part = slice(start, start + RENDER_CHUNK)
        out[part] = _render_chunk(identities, labels[part], _pose_rows(poses, part), sunglasses[part],
                                   lipstick[part])
    return out


def _pose_rows(poses: Poses, rows: slice) -> Poses:
    return Poses(**{name: getattr(poses, name)[rows] for name in Poses.__dataclass_fields__})


def _col(values: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1, 1) for broadcasting against (n, H, W)."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx, cy, rx, ry) -> np.ndarray:
    """Anti-aliased filled ellipse: 1 inside, 0 outside, a one-pixel ramp at the edge."""
    radius = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - radius) * np.minimum(rx, ry) + 0.5, 0.0, 1.0)


def _box(xx: np.ndarray, yy: np.ndarray, x0, x1, y0, y1) -> np.ndarray:
    inside_x = np.clip(np.minimum(xx - x0, x1 - xx) + 0.5, 0.0, 1.0)
    inside_y = np.clip(np.minimum(yy - y0, y1 - yy) + 0.5, 0.0, 1.0)
    return inside_x * inside_y


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Blend (n, 3) colours into the (n, H, W, 3) canvas where mask (n, H, W) is 1."""
    canvas += mask[..., None] * (colour[:, None, None, :].astype(np.float32) - canvas)


def _render_chunk(ids: Identities, labels: np.ndarray, poses: Poses, sunglasses: np.ndarray,
                  lipstick: np.ndarray) -> np.ndarray:
    n = len(labels)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    xx, yy = xx[None], yy[None]
    scale = _col(poses.scale)
    cx = _col(ids.face_center[labels, 0] + poses.shift[:, 0])
    cy = _col(ids.face_center[labels, 1] + poses.shift[:, 1])
    rx, ry = _col(ids.face_radii[labels, 0]) * scale, _col(ids.face_radii[labels, 1]) * scale

    angle, freq, amp = (_col(ids.stripes[labels, i]) for i in range(3))
    wave = amp * np.cos(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    canvas = ids.background[labels][:, None, None, :].astype(np.float32) + wave[..., None]

    hair_top = cy - ry + 2 * ry * _col(ids.hairline[labels])
    hair_outline = _ellipse(xx, yy, cx, cy - 1.5, rx + 2.0, ry + 2.5)
    _paint(canvas, hair_outline, ids.hair[labels])
    _paint(canvas, _ellipse(xx, yy, cx, cy, rx, ry) * np.clip(yy - hair_top + 0.5, 0.0, 1.0), ids.skin[labels])

    eye_dx = _col(ids.eye_dx[labels]) * scale
    eye_y = cy - _col(ids.eye_dy[labels]) * scale
    erx, ery = _col(ids.eye_radii[labels, 0]) * scale, _col(ids.eye_radii[labels, 1]) * scale
    brow_y = eye_y - _col(ids.brow_gap[labels]) * scale
    for side in (-1.0, 1.0):
        ex = cx + side * eye_dx
        _paint(canvas, _ellipse(xx, yy, ex, eye_y, erx + 0.8, ery + 0.5), np.full((n, 3), 235.0))
        _paint(canvas, _ellipse(xx, yy, ex, eye_y, erx * 0.6, ery), ids.iris[labels])
        _paint(canvas, _box(xx, yy, ex - erx - 1, ex + erx + 1, brow_y - 0.7, brow_y + 0.7), ids.hair[labels] * 0.7)

    nose_bottom = eye_y + _col(ids.nose_length[labels]) * scale
    _paint(canvas, 0.6 * _box(xx, yy, cx - 1.0, cx + 1.0, eye_y + 1, nose_bottom), ids.skin[labels] * 0.7)
    mouth_y = cy + _col(ids.mouth_dy[labels]) * scale
    mrx, mry = _col(ids.mouth_radii[labels, 0]) * scale, _col(ids.mouth_radii[labels, 1]) * scale
    _paint(canvas, _ellipse(xx, yy, cx, mouth_y, mrx, mry), ids.lips[labels])
    if lipstick.any():
        _paint(canvas, lipstick[:, None, None] * _ellipse(xx, yy, cx, mouth_y, mrx + 0.7, mry + 0.7), _LIPSTICK[None])

    if sunglasses.any():
        _paint(canvas, sunglasses[:, None, None] * _sunglasses(xx, yy, cx, eye_y, eye_dx, scale), _LENS[None])

    light = _col(poses.gain) * (1.0 + _col(poses.side_light) * (xx - WIDTH / 2) / (WIDTH / 2))
    canvas = canvas * light[..., None] + _col(poses.offset)[..., None]
    noise = np.stack([_noise(seed) for seed in poses.noise_seed])
    return np.clip(canvas + noise, 0.0, 255.0).astype(np.float32)


def _noise(seed: np.int64) -> np.ndarray:
    """Each image's own sensor noise, so an image does not depend on how the batch was chunked."""
    return np.random.default_rng(int(seed)).standard_normal((HEIGHT, WIDTH, 3), dtype=np.float32) * 5.0


_LENS = np.array([18.0, 16.0, 24.0])
_LIPSTICK = np.array([150.0, 20.0, 210.0])  # violet: no identity's lips (reds, 120..210, 40..100, 40..100)


def _sunglasses(xx, yy, cx, eye_y, eye_dx, scale) -> np.ndarray:
    """Mask of two dark lenses over the eyes, the bridge between them and the temples to the face edge."""
    lens_rx, lens_ry = 4.2 * scale, 3.4 * scale
    lenses = np.maximum(
        _ellipse(xx, yy, cx - eye_dx, eye_y + 0.5, lens_rx, lens_ry),
        _ellipse(xx, yy, cx + eye_dx, eye_y + 0.5, lens_rx, lens_ry),
    )
    bridge = _box(xx, yy, cx - eye_dx, cx + eye_dx, eye_y - 1.2, eye_y + 0.2)
    temples = _box(xx, yy, cx - eye_dx - 9 * scale, cx + eye_dx + 9 * scale, eye_y - 1.0, eye_y)
    return np.maximum(np.maximum(lenses, bridge), temples)
