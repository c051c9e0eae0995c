"""Procedural geometry of the eight HvM categories: each object is a list of flat or domed parts at a depth.

Objects live in a right-handed frame with x to the right, y up and z towards the viewer, spanning about
[-1, 1] in x and y.  A part is a planar polygon at depth ``z`` (so a rotation in depth moves and squashes it
like a layer of a 2.5-D puppet); ``dome`` parts are shaded as half-ellipsoids.  Each category has eight fixed
objects (as HvM has), whose shape comes from an identity generator; colours jitter per image.
"""
from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from synth.world.levels import CATEGORIES

Generator = np.random.Generator


@dataclass
class Part:
    """One polygon of an object: vertices (K×2, object frame), depth, RGB colour in [0,1], optional dome."""

    verts: np.ndarray
    color: np.ndarray
    z: float = 0.0
    dome: tuple[float, float, float, float] | None = None  # centre x, y and radii of a shading half-ellipsoid
    role: str = ""  # named parts (eyes, nose, ...) can be rearranged by controls such as scrambled faces


# ----------------------------------------------------------------------------------------------- primitives
def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28, a0: float = 0.0, a1: float = 2 * np.pi,
            angle: float = 0.0) -> np.ndarray:
    """Vertices of an ellipse (or an arc of it closed through its chord), optionally rotated by ``angle``."""
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * np.pi)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Vertices of an axis-aligned rectangle."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def bar(p: tuple[float, float], q: tuple[float, float], width: float) -> np.ndarray:
    """A straight limb of the given width from point p to point q."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * width / 2
    return np.array([p + nrm, q + nrm, q - nrm, p - nrm])


def radial(cx: float, cy: float, radius: Callable[[np.ndarray], np.ndarray], n: int = 40) -> np.ndarray:
    """A star-convex outline r(θ) around a centre, for fruit-like shapes."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radius(t)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour from hue/saturation/value, hue wrapping at 1."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def jitter(color: np.ndarray, img: Generator, amount: float = 0.08) -> np.ndarray:
    """A colour with per-image brightness and channel jitter."""
    return np.clip(color * img.uniform(1 - amount, 1 + amount) + img.normal(0, amount / 3, 3), 0, 1)


def _vivid(img: Generator) -> np.ndarray:
    return hsv(img.random(), img.uniform(0.45, 0.95), img.uniform(0.45, 0.95))


def _dark(v: float = 0.12) -> np.ndarray:
    return np.array([v, v, v * 1.1])


# ----------------------------------------------------------------------------------------------- categories
def animal(ident: Generator, img: Generator) -> list[Part]:
    """A quadruped in side view: body, four legs, neck, head, snout, ear, tail; proportions vary per object."""
    body_l, body_h = ident.uniform(0.45, 0.7), ident.uniform(0.2, 0.32)
    leg_l, leg_w = ident.uniform(0.3, 0.6), ident.uniform(0.07, 0.16)
    neck_l = ident.uniform(0.1, 0.55)
    head_r = ident.uniform(0.13, 0.2)
    palette = [hsv(0.07, 0.6, 0.45), hsv(0.08, 0.35, 0.75), hsv(0, 0, 0.25), hsv(0.1, 0.15, 0.9),
               hsv(0.06, 0.75, 0.6), hsv(0, 0, 0.55)]
    fur = jitter(palette[ident.integers(len(palette))], img, 0.12)
    far = fur * 0.75
    by = 0.15 - (leg_l - 0.45) * 0.5
    foot = by - body_h * 0.6 - leg_l
    parts = [Part(bar((-body_l * 0.95, by + body_h * 0.3), (-body_l * 1.35, by - body_h * ident.uniform(-0.5, 1.5)),
                      ident.uniform(0.04, 0.09)), fur, z=-0.1)]
    for x in (-body_l * 0.65, body_l * 0.6):  # far legs
        parts.append(Part(bar((x + 0.06, by), (x + 0.08, foot), leg_w), far, z=-0.2))
    parts.append(Part(ellipse(0, by, body_l, body_h), fur, dome=(0, by, body_l, body_h)))
    if ident.random() < 0.4:  # spotted or striped coats
        for _ in range(ident.integers(3, 7)):
            sx, sy = ident.uniform(-0.7, 0.7) * body_l, by + ident.uniform(-0.5, 0.5) * body_h
            parts.append(Part(ellipse(sx, sy, 0.06, 0.045, n=12), fur * 0.45, z=0.01))
    for x in (-body_l * 0.7, body_l * 0.55):  # near legs
        parts.append(Part(bar((x, by), (x - 0.02, foot), leg_w), fur, z=0.2))
    nx, ny = body_l * 0.85, by + body_h * 0.4
    hx, hy = nx + neck_l * 0.45, ny + neck_l
    parts.append(Part(bar((nx - 0.05, ny - 0.05), (hx, hy), head_r * 1.1), fur, z=0.05))
    parts.append(Part(ellipse(hx + head_r * 0.9, hy - head_r * 0.3, head_r * 0.9, head_r * 0.55), fur * 0.9, z=0.1))
    parts.append(Part(ellipse(hx, hy, head_r, head_r * 0.85), fur, z=0.1, dome=(hx, hy, head_r, head_r * 0.85)))
    parts.append(Part(np.array([[hx - head_r * 0.6, hy + head_r * 0.5], [hx - head_r * 0.1, hy + head_r * 0.7],
                                [hx - head_r * 0.5, hy + head_r * 1.6]]), fur * 0.8, z=0.12))
    parts.append(Part(ellipse(hx + head_r * 0.3, hy + head_r * 0.2, 0.028, 0.028, n=10), _dark(0.05), z=0.15))
    return parts


def boat(ident: Generator, img: Generator) -> list[Part]:
    """A hull with cabin, windows and either a sail, a funnel or nothing; hull depth and superstructure vary."""
    length, depth = ident.uniform(0.8, 0.98), ident.uniform(0.16, 0.3)
    bow, stern = ident.uniform(0.15, 0.4), ident.uniform(0.0, 0.15)
    y0 = -0.35 + ident.uniform(-0.1, 0.1)
    hull_c = jitter(_vivid(img) if img.random() < 0.6 else hsv(0, 0, 0.92), img)
    parts = [Part(np.array([[-length, y0 + depth * 0.6], [length, y0 + depth * 0.9], [length - bow, y0 - depth * 0.7],
                            [-length + stern, y0 - depth * 0.7]]), hull_c, dome=(0, y0 + depth, length, depth * 2.2)),
             Part(rect(-length, y0 + depth * 0.45, length * 0.98, y0 + depth * 0.62), hull_c * 0.6, z=0.02)]
    kind = ident.integers(3)
    deck = y0 + depth * 0.6
    if kind == 0:  # sailboat
        mx = ident.uniform(-0.15, 0.1)
        top = ident.uniform(0.75, 0.95)
        parts.append(Part(rect(mx - 0.02, deck, mx + 0.02, top), hsv(0.08, 0.4, 0.35), z=0.0))
        sail = hsv(img.random(), img.uniform(0, 0.5), 0.95)
        parts.append(Part(np.array([[mx + 0.03, top], [mx + 0.03, deck + 0.08], [mx + length * 0.8, deck + 0.08]]),
                          jitter(sail, img), z=0.05))
        if ident.random() < 0.7:
            parts.append(Part(np.array([[mx - 0.03, top * 0.95], [mx - 0.03, deck + 0.1],
                                        [mx - length * 0.7, deck + 0.1]]), jitter(sail * 0.92, img), z=0.05))
    else:
        cab_l, cab_h = ident.uniform(0.3, 0.6), ident.uniform(0.15, 0.3)
        cx0 = -length * ident.uniform(0.2, 0.6)
        cab_c = jitter(hsv(0, 0, 0.9), img)
        parts.append(Part(rect(cx0, deck, cx0 + cab_l * 2, deck + cab_h), cab_c, z=0.02))
        for i in range(int(cab_l * 8)):
            wx = cx0 + 0.08 + i * 0.23
            parts.append(Part(rect(wx, deck + cab_h * 0.45, wx + 0.1, deck + cab_h * 0.8), hsv(0.58, 0.5, 0.3), z=0.05))
        if kind == 2:  # a second deck and a funnel
            parts.append(Part(rect(cx0 + 0.1, deck + cab_h, cx0 + cab_l * 1.4, deck + cab_h * 1.8), cab_c * 0.95))
            fx = cx0 + cab_l * 0.9
            parts.append(Part(rect(fx, deck + cab_h * 1.8, fx + 0.14, deck + cab_h * 1.8 + 0.25),
                              jitter(_vivid(img), img)))
    return parts


def car(ident: Generator, img: Generator) -> list[Part]:
    """A car in side view: body, cabin with windows, wheels with hubs, lights; sedans to vans by proportion."""
    length, height = ident.uniform(0.85, 0.98), ident.uniform(0.18, 0.3)
    cab_h, cab_front, cab_back = ident.uniform(0.18, 0.42), ident.uniform(0.1, 0.45), ident.uniform(-0.85, -0.3)
    slant = ident.uniform(0.05, 0.3)
    wheel_r = ident.uniform(0.14, 0.2)
    y0 = -0.25
    paint = jitter(_vivid(img) if img.random() < 0.75 else hsv(0, 0, img.uniform(0.1, 0.9)), img)
    glass = hsv(0.58, 0.35, 0.35)
    parts = [Part(ellipse(x, y0, wheel_r, wheel_r, n=20), _dark(0.08), z=-0.3) for x in (-length * 0.55, length * 0.6)]
    parts.append(Part(np.array([[cab_back, y0 + height], [cab_back + slant * 0.5, y0 + height + cab_h],
                                [cab_front - slant, y0 + height + cab_h], [cab_front, y0 + height]]), paint * 0.95))
    win = np.array([[cab_back + 0.06, y0 + height + 0.02], [cab_back + slant * 0.5 + 0.06, y0 + height + cab_h - 0.04],
                    [cab_front - slant - 0.04, y0 + height + cab_h - 0.04], [cab_front - 0.05, y0 + height + 0.02]])
    parts.append(Part(win, glass, z=0.05))
    mid = (cab_back + cab_front) / 2
    parts.append(Part(rect(mid - 0.015, y0 + height, mid + 0.015, y0 + height + cab_h), paint * 0.9, z=0.06))
    parts.append(Part(np.array([[-length, y0 - 0.02], [length, y0 - 0.02], [length, y0 + height * 0.8],
                                [length - 0.08, y0 + height], [-length + 0.05, y0 + height],
                                [-length, y0 + height * 0.7]]),
                      paint, z=0.1, dome=(0, y0 + height * 0.4, length * 1.1, height * 1.6)))
    parts.append(Part(rect(length - 0.08, y0 + height * 0.45, length, y0 + height * 0.7), hsv(0.15, 0.3, 1.0), z=0.12))
    parts.append(Part(rect(-length, y0 + height * 0.45, -length + 0.05, y0 + height * 0.65), hsv(0, 0.9, 0.8), z=0.12))
    for x in (-length * 0.55, length * 0.6):
        parts.append(Part(ellipse(x, y0, wheel_r, wheel_r, n=20), _dark(0.1), z=0.15))
        parts.append(Part(ellipse(x, y0, wheel_r * 0.5, wheel_r * 0.5, n=14), hsv(0, 0, 0.7), z=0.16,
                          dome=(x, y0, wheel_r * 0.5, wheel_r * 0.5)))
    return parts


def chair(ident: Generator, img: Generator) -> list[Part]:
    """A chair in three-quarter view: back (solid or slatted), seat in perspective, four legs, optional arms."""
    seat_w, seat_d, seat_y = ident.uniform(0.35, 0.5), ident.uniform(0.12, 0.22), ident.uniform(-0.25, 0.0)
    back_h, leg_w = ident.uniform(0.45, 0.75), ident.uniform(0.04, 0.08)
    wood = jitter([hsv(0.08, 0.6, 0.45), hsv(0.07, 0.5, 0.7), hsv(0, 0, 0.15), _vivid(img)][ident.integers(4)], img)
    skew = seat_d * 1.2
    bx = -seat_w + skew
    parts = [Part(bar((x, seat_y), (x, -0.95 + 0.1), leg_w), wood * 0.7, z=-0.3) for x in (bx, seat_w + skew)]
    if ident.random() < 0.5:
        parts.append(Part(rect(bx, seat_y, seat_w + skew, seat_y + back_h), wood, z=-0.25))
    else:
        for x in np.linspace(bx, seat_w + skew, int(ident.integers(3, 6))):
            parts.append(Part(bar((x, seat_y), (x, seat_y + back_h), 0.06), wood, z=-0.25))
        parts.append(Part(rect(bx - 0.03, seat_y + back_h - 0.1, seat_w + skew + 0.03, seat_y + back_h), wood, z=-0.24))
    parts.append(Part(np.array([[-seat_w, seat_y - seat_d], [seat_w, seat_y - seat_d], [seat_w + skew, seat_y],
                                [bx, seat_y]]), wood * 1.1, z=0.0))
    parts.append(Part(rect(-seat_w, seat_y - seat_d - 0.06, seat_w, seat_y - seat_d), wood * 0.8, z=0.05))
    for x in (-seat_w + 0.03, seat_w - 0.03):
        parts.append(Part(bar((x, seat_y - seat_d), (x, -0.95), leg_w), wood * 0.85, z=0.3))
    if ident.random() < 0.35:  # armrests
        for x in (-seat_w, seat_w):
            parts.append(Part(rect(x - 0.03, seat_y - seat_d, x + skew, seat_y + 0.2), wood * 0.9, z=0.2))
    return parts


def face(ident: Generator, img: Generator) -> list[Part]:
    """A face: head, ears, hair, eyes (white, iris, pupil), brows, nose and mouth in face configuration."""
    skins = [hsv(0.07, 0.25, 0.95), hsv(0.07, 0.35, 0.85), hsv(0.06, 0.45, 0.7), hsv(0.06, 0.55, 0.5),
             hsv(0.05, 0.55, 0.35), hsv(0.08, 0.3, 0.8)]
    skin = jitter(skins[ident.integers(len(skins))], img, 0.06)
    hrx, hry = ident.uniform(0.55, 0.7), ident.uniform(0.78, 0.92)
    eye_y, eye_x, eye_r = ident.uniform(0.08, 0.22), ident.uniform(0.24, 0.32), ident.uniform(0.07, 0.1)
    mouth_y, mouth_w = ident.uniform(-0.5, -0.38), ident.uniform(0.16, 0.26)
    hair = jitter([hsv(0.08, 0.6, 0.2), hsv(0.1, 0.5, 0.6), hsv(0, 0, 0.08), hsv(0.05, 0.7, 0.45),
                   hsv(0, 0, 0.7)][ident.integers(5)], img)
    iris = [hsv(0.58, 0.6, 0.55), hsv(0.08, 0.7, 0.3), hsv(0.3, 0.5, 0.4)][ident.integers(3)]
    parts = [Part(ellipse(s * hrx * 0.98, 0.02, 0.12, 0.2), skin * 0.9, z=-0.3, role="ear") for s in (-1, 1)]
    parts.append(Part(ellipse(0, 0, hrx, hry), skin, dome=(0, 0, hrx, hry)))
    hair_top = ident.uniform(0.45, 0.7)
    parts.append(Part(ellipse(0, hry * 0.15, hrx * 1.04, hry * 0.95, n=24, a0=0.1, a1=np.pi - 0.1), hair, z=0.05,
                      dome=(0, 0, hrx * 1.05, hry)))
    parts[-1].verts[:, 1] = np.maximum(parts[-1].verts[:, 1], hair_top)
    for s in (-1, 1):
        ex = s * eye_x
        parts += [Part(ellipse(ex, eye_y, eye_r * 1.5, eye_r, n=20), np.array([0.95, 0.95, 0.93]), z=0.25, role="eye"),
                  Part(ellipse(ex, eye_y, eye_r * 0.75, eye_r * 0.75, n=16), iris, z=0.26, role="eye"),
                  Part(ellipse(ex, eye_y, eye_r * 0.35, eye_r * 0.35, n=12), _dark(0.03), z=0.27, role="eye"),
                  Part(bar((ex - eye_r * 1.4, eye_y + eye_r * 1.6), (ex + eye_r * 1.4, eye_y + eye_r * 1.9 - s * 0.02),
                           0.045), hair * 0.8, z=0.27, role="brow")]
    nose_l = ident.uniform(0.22, 0.32)
    parts.append(Part(np.array([[0, eye_y - 0.02], [0.07, eye_y - nose_l], [-0.07, eye_y - nose_l]]), skin * 0.8,
                      z=0.4, role="nose"))
    parts.append(Part(ellipse(0, eye_y - nose_l, 0.09, 0.045, n=14), skin * 0.7, z=0.42, role="nose"))
    parts.append(Part(ellipse(0, mouth_y, mouth_w, ident.uniform(0.04, 0.08), n=20),
                      hsv(0.99, 0.55, 0.6) * skin.mean() * 1.3, z=0.3, role="mouth"))
    return parts


def fruit(ident: Generator, img: Generator) -> list[Part]:
    """Apples, oranges, pears, lemons, bananas, strawberries, plums: outline, colour, stem and leaf."""
    kind = ident.integers(7)
    r = ident.uniform(0.55, 0.75)
    if kind == 0:  # apple: dimpled top
        outline, base = (radial(0, 0, lambda t: r * (1 - 0.12 * np.exp(-((t - np.pi / 2) ** 2) / 0.08))),
                         hsv(0.0, 0.8, 0.75))
    elif kind == 1:  # orange
        outline, base = radial(0, 0, lambda t: r + 0 * t), hsv(0.08, 0.9, 0.95)
    elif kind == 2:  # pear: small top, large bottom
        outline, base = (radial(0, -0.1, lambda t: r * (0.75 + 0.25 * np.sin(-t) + 0.15 * np.sin(-t) ** 2)),
                         hsv(0.2, 0.6, 0.75))
    elif kind == 3:  # lemon: pointed ellipse
        outline, base = radial(0, 0, lambda t: r * (0.65 + 0.35 * np.abs(np.cos(t)) ** 3)), hsv(0.15, 0.85, 0.95)
    elif kind == 4:  # banana: a crescent
        t = np.linspace(0.25 * np.pi, 0.95 * np.pi, 20)
        outer = np.stack([0.9 * np.cos(t) * 1.1 + 0.2, 0.9 * np.sin(t) - 0.55], 1)
        inner = np.stack([0.65 * np.cos(t[::-1]) * 1.2 + 0.28, 0.55 * np.sin(t[::-1]) - 0.4], 1)
        outline, base = np.vstack([outer, inner]), hsv(0.14, 0.85, 0.95)
    elif kind == 5:  # strawberry: rounded triangle, point down
        outline, base = (radial(0, 0.05, lambda t: r * (0.8 + 0.25 * np.sin(t) - 0.1 * np.cos(2 * t))),
                         hsv(0.98, 0.85, 0.8))
    else:  # plum
        outline, base = radial(0, 0, lambda t: r * (0.9 + 0.08 * np.cos(2 * t))), hsv(0.8, 0.6, 0.45)
    if kind in (0, 2) and ident.random() < 0.4:
        base = hsv(0.25, 0.7, 0.7)  # green apple / pear
    col = jitter(base, img, 0.1)
    lo, hi = outline.min(0), outline.max(0)
    c, rad = (lo + hi) / 2, (hi - lo) / 2
    parts = [Part(outline, col, dome=(c[0], c[1], rad[0], rad[1]))]
    if kind == 5:
        for _ in range(12):
            sx, sy = ident.uniform(-0.4, 0.4) * r, ident.uniform(-0.5, 0.5) * r
            parts.append(Part(ellipse(sx, sy, 0.02, 0.03, n=8), hsv(0.14, 0.6, 0.95), z=0.05))
    top = hi[1]
    if kind != 4:
        parts.append(Part(bar((0, top - 0.05), (ident.uniform(-0.1, 0.15), top + 0.2), 0.05),
                          hsv(0.08, 0.6, 0.3), z=0.1))
        if ident.random() < 0.7:
            parts.append(Part(ellipse(0.15, top + 0.1, 0.16, 0.06, n=14, angle=ident.uniform(0.2, 0.8)),
                              hsv(0.3, 0.7, 0.55), z=0.11))
    return parts


def plane(ident: Generator, img: Generator) -> list[Part]:
    """An aircraft from the side and a little above: fuselage, swept wings, fin, stabiliser, windows, engines."""
    length, fus_h = ident.uniform(0.85, 0.98), ident.uniform(0.09, 0.15)
    sweep, span = ident.uniform(0.1, 0.5), ident.uniform(0.35, 0.8)
    chord = ident.uniform(0.18, 0.4)
    skin = jitter(hsv(0.6, img.uniform(0, 0.15), img.uniform(0.6, 0.95)), img)
    livery = jitter(_vivid(img), img)
    wx = ident.uniform(-0.15, 0.1)
    parts = [Part(np.array([[wx, 0.02], [wx + chord, 0.02], [wx - sweep + chord * 0.5, span * 0.6],
                            [wx - sweep, span * 0.6]]), skin * 0.8, z=-0.3)]
    nose = np.array([[length, 0.0], [length - 0.1, fus_h], [-length + 0.2, fus_h], [-length, fus_h * 1.6],
                     [-length, -fus_h * 0.2], [-length + 0.25, -fus_h], [length - 0.12, -fus_h]])
    parts.append(Part(nose, skin, dome=(0, 0, length, fus_h * 2)))
    parts.append(Part(rect(-length + 0.2, -fus_h * 0.35, length - 0.1, -fus_h * 0.1), livery, z=0.02))
    fin_h = ident.uniform(0.3, 0.5)
    parts.append(Part(np.array([[-length + 0.3, fus_h * 0.9], [-length + 0.02, fus_h * 0.9 + fin_h],
                                [-length - 0.05, fus_h * 0.9 + fin_h], [-length, fus_h]]), livery, z=0.0))
    if ident.random() < 0.6:
        for i in range(int(ident.integers(6, 14))):
            x = length - 0.3 - i * 0.1
            parts.append(Part(ellipse(x, fus_h * 0.35, 0.022, 0.03, n=8), hsv(0.58, 0.4, 0.25), z=0.05))
    else:  # cockpit canopy of a small or fighter aircraft
        parts.append(Part(ellipse(length * 0.45, fus_h, 0.22, 0.08, n=16, a0=0, a1=np.pi),
                          hsv(0.55, 0.5, 0.35), z=0.05))
    parts.append(Part(np.array([[-length + 0.15, 0.0], [-length + 0.35, 0.0], [-length + 0.05, -0.25],
                                [-length - 0.02, -0.25]]), skin * 0.9, z=0.2))
    parts.append(Part(np.array([[wx, -0.02], [wx + chord, -0.02], [wx - sweep * 1.2 + chord * 0.5, -span],
                                [wx - sweep * 1.2, -span]]), skin * 0.95, z=0.3))
    if ident.random() < 0.5:
        ex = wx - sweep * 0.5 + chord * 0.3
        parts.append(Part(ellipse(ex, -span * 0.4, 0.13, 0.05), skin * 0.7, z=0.35, dome=(ex, -span * 0.4, 0.13, 0.05)))
    return parts


def table(ident: Generator, img: Generator) -> list[Part]:
    """A table in three-quarter view: top in perspective with an apron, four legs or a pedestal."""
    w, d, top_y = ident.uniform(0.7, 0.95), ident.uniform(0.15, 0.3), ident.uniform(0.0, 0.35)
    thick, leg_w = ident.uniform(0.05, 0.12), ident.uniform(0.05, 0.1)
    wood = jitter([hsv(0.08, 0.6, 0.45), hsv(0.07, 0.45, 0.7), hsv(0, 0, 0.2), hsv(0, 0, 0.85),
                   _vivid(img)][ident.integers(5)], img)
    skew = d * 1.1
    pedestal = ident.random() < 0.3
    parts = []
    if not pedestal:
        parts += [Part(bar((x, top_y), (x, -0.9), leg_w), wood * 0.65, z=-0.3)
                  for x in (-w + skew + 0.05, w + skew - 0.05)]
    round_top = ident.random() < 0.4
    if round_top:
        parts.append(Part(ellipse(skew / 2, top_y - d / 2, w + skew / 2, d), wood * 1.1, z=0.0))
        parts.append(Part(np.vstack([ellipse(skew / 2, top_y - d / 2, w + skew / 2, d, n=16, a0=np.pi, a1=2 * np.pi),
                                     ellipse(skew / 2, top_y - d / 2 - thick, w + skew / 2, d, n=16, a0=2 * np.pi,
                                             a1=np.pi)]), wood * 0.75, z=0.01))
    else:
        parts.append(Part(np.array([[-w, top_y - d], [w, top_y - d], [w + skew, top_y], [-w + skew, top_y]]),
                          wood * 1.1))
        parts.append(Part(rect(-w, top_y - d - thick, w, top_y - d), wood * 0.75, z=0.05))
    if pedestal:
        parts.append(Part(bar((skew / 2, top_y - d), (skew / 2, -0.85), leg_w * 2.2), wood * 0.8, z=0.1))
        parts.append(Part(ellipse(skew / 2, -0.88, 0.4, 0.08), wood * 0.7, z=0.1))
    else:
        parts += [Part(bar((x, top_y - d), (x, -0.95), leg_w), wood * 0.85, z=0.3) for x in (-w + 0.05, w - 0.05)]
    return parts


BUILDERS: dict[str, Callable[[Generator, Generator], list[Part]]] = dict(
    zip(CATEGORIES, (animal, boat, car, chair, face, fruit, plane, table)))
OBJECTS_PER_CATEGORY = 8
# Categories drawn in profile, which a rotation in depth may mirror (a face seen from behind is not a face).
MIRRORABLE = frozenset({"animals", "boats", "cars", "chairs", "planes", "tables"})


def build(category: str, obj: int, img: Generator, world_seed: int = 0) -> list[Part]:
    """The parts of object ``obj`` (0..7) of a category, with this image's colour jitter."""
    ident = np.random.default_rng([world_seed, CATEGORIES.index(category), obj])
    return BUILDERS[category](ident, img)


def scramble_face(parts: list[Part], img: Generator) -> list[Part]:
    """The same face parts with their configuration broken: each feature group moves to a random place."""
    out, groups = [], {}
    for p in parts:
        if p.role in ("eye", "brow", "nose", "mouth"):
            side = float(np.sign(p.verts[:, 0].mean())) if p.role in ("eye", "brow") else 0.0
            groups.setdefault((p.role, side), []).append(p)
        else:
            out.append(p)
    # Slots on a jittered grid inside the head, assigned in random order so no group keeps its place.
    slots = [(x, y) for y in (0.45, 0.1, -0.25, -0.55) for x in (-0.3, 0.0, 0.3)]
    order = img.permutation(len(slots))
    for k, (_, members) in enumerate(sorted(groups.items())):
        allv = np.vstack([m.verts for m in members])
        centre = (allv.min(0) + allv.max(0)) / 2
        sx, sy = slots[order[k]]
        target = np.array([sx + img.uniform(-0.05, 0.05), sy + img.uniform(-0.05, 0.05)])
        ang = img.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        for m in members:
            v = (m.verts - centre) @ rot.T + target
            out.append(Part(v, m.color, z=m.z, role=m.role))
    return out
