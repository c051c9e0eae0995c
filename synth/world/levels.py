"""The world's fixed vocabulary: its categories, splits, HvM's variation levels and the localizer's controls, in a
module that imports nothing, so that ``phosphene --help`` lists them without loading torch."""
from __future__ import annotations

# The eight object categories, after HvM's (Majaj et al. 2015); synth.world.shapes builds each.
CATEGORIES: tuple[str, ...] = ("animals", "boats", "cars", "chairs", "faces", "fruits", "planes", "tables")
SPLITS: dict[str, int] = {"train": 20000, "val": 2000, "test": 2000}
# HvM's three variation levels (Majaj et al. 2015): V0 centred, canonical pose and size; V3 and V6 translate up
# to about ±1.2° and ±2.4° of an 8° image (±0.15 and ±0.3 of its width) and rotate up to ±45° and ±90°.
# Rotations in depth are capped at ±45°/±65° here (flat parts collapse beyond) and mirroring supplies the far
# side.  ``clutter`` is phosphene's addition: blobs that make the set hard enough for adversarial work.
VARIATION: dict[str, dict[str, float]] = {
    "low": dict(pos=0.0, depth=0.0, roll=0.0, scale_lo=1.0, scale_hi=1.0, clutter=0, parts=1, mirror=0.0),
    "medium": dict(pos=0.15, depth=45.0, roll=45.0, scale_lo=0.8, scale_hi=1.2, clutter=1, parts=2, mirror=0.5),
    "high": dict(pos=0.3, depth=65.0, roll=90.0, scale_lo=0.6, scale_hi=1.4, clutter=3, parts=3, mirror=0.5),
}
CONTROLS: tuple[str, ...] = ("scrambled_faces", "phase_scrambled")
