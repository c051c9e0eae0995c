"""Micro-stimulation and inactivation of a site on a cortical sheet, as Interventions on the sheet's layer."""
from __future__ import annotations

import torch

from synth.errors import ConfigError
from synth.zoo.probe import Intervention
from synth.zoo.sheets import Sheet

# Micro-stimulation's spread of activation with current (reference: epflneuroailab's topographic perturbation code)
SPREAD_SLOPE_MM_PER_UA, SPREAD_THRESHOLD_UA = 0.00505, 5.26


def spread_mm(current_ua: float) -> float:
    """The length constant λ (mm) of the activation a current spreads around the electrode tip:
    0.00505 mm/µA × (I − 5.26 µA), so 0.23 mm at Afraz et al.'s 50 µA."""
    if not current_ua > SPREAD_THRESHOLD_UA:
        raise ConfigError(f"a current of {current_ua} µA is at or below the {SPREAD_THRESHOLD_UA} µA at which the "
                          "model's spread starts; give more current")
    return SPREAD_SLOPE_MM_PER_UA * (current_ua - SPREAD_THRESHOLD_UA)


def _distances(sheet: Sheet, center_mm: tuple[float, float]) -> torch.Tensor:
    """Each unit's distance (mm) from a point on the sheet, as a C×H×W map."""
    c = torch.as_tensor(center_mm, dtype=sheet.positions.dtype)
    if c.shape != (2,) or not torch.isfinite(c).all():
        raise ConfigError(f"a site is an (x, y) point in mm, got {center_mm!r}")
    return sheet.squared_distance(c).sqrt().view(sheet.shape)


def microstimulation(sheet: Sheet, center_mm: tuple[float, float], current_ua: float = 50.0,
                     rate_hz: float = 200.0) -> Intervention:
    """Micro-stimulation at a site of ``sheet``'s layer as an ``Intervention``: each unit's activity times a gain
    1 + (rate / 30) · exp(−d / λ(I)), d its distance from the site and λ from ``spread_mm`` (defaults: Afraz et al.
    2006, 50 µA at 200 Hz)."""
    if not rate_hz > 0:
        raise ConfigError(f"the pulse rate must be > 0 Hz, got {rate_hz}")
    lam = spread_mm(current_ua)
    gain = 1 + (rate_hz / 30) * torch.exp(-_distances(sheet, center_mm) / lam)
    x, y = center_mm
    return Intervention(sheet.layer, "scale", gain,
                        label=f"microstim({sheet.layer} at ({x:g}, {y:g}) mm, {current_ua:g} µA, {rate_hz:g} Hz)")


def inactivation(sheet: Sheet, center_mm: tuple[float, float], radius_mm: float = 1.0,
                 depth: float = 1.0) -> Intervention:
    """Muscimol-like inactivation: activity times 1 − depth · exp(−d² / 2σ²) with σ = ``radius_mm``, silencing the
    site's units fully at ``depth`` 1 and sparing those a few σ away."""
    if not radius_mm > 0 or not 0 < depth <= 1:
        raise ConfigError(f"inactivation needs radius_mm > 0 and 0 < depth <= 1, got {radius_mm} and {depth}")
    d = _distances(sheet, center_mm)
    x, y = center_mm
    return Intervention(sheet.layer, "scale", 1 - depth * torch.exp(-d ** 2 / (2 * radius_mm ** 2)),
                        label=f"inactivation({sheet.layer} at ({x:g}, {y:g}) mm, σ {radius_mm:g} mm, depth {depth:g})")
