"""The behavioural read-out: face / non-face choices on degraded stimuli, and psychometric curves."""
from __future__ import annotations

import numpy as np
import torch

from synth.errors import ConfigError


# ------------------------------------------------------------------------------------------ behaviour
def degrade(images: torch.Tensor, signal: float, seed: int = 0) -> torch.Tensor:
    """Noise-degraded stimuli at a visual-signal level in [0, 1]: each image mixed, signal : 1 − signal, with a
    phase-scrambled copy of itself (``render.phase_scramble``: same amplitude spectrum, random phase), so that
    the level changes the image's structure and not its spectrum (0: noise only, 1: the image)."""
    from synth.world.render import phase_scramble

    if not 0 <= signal <= 1:
        raise ConfigError(f"the visual signal is a fraction in [0, 1], got {signal}")
    rng = np.random.default_rng(seed)
    x = images.detach().cpu().float()
    u8 = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    noise = torch.from_numpy(np.stack([phase_scramble(im, rng) for im in u8])).permute(0, 3, 1, 2).float() / 255
    return (signal * x + (1 - signal) * noise).clamp(0, 1)


def face_choices(model, images: torch.Tensor, face_class: str = "faces", draws: int = 8) -> torch.Tensor:
    """A two-alternative face / non-face verdict per image read from the model's decoder: 'face' when the face
    class gets more than half the probability (a stochastic model: its mean over ``draws`` noise draws)."""
    if face_class not in model.classes:
        raise ConfigError(f"the model has no class {face_class!r} to read a face choice from (classes: "
                          f"{', '.join(model.classes)})")
    k = draws if model.stochastic else 1
    with torch.no_grad():
        z = model.activations(images.to(model.device), "logits", draws=k)["logits"]
    return face_verdicts(z.view(k, images.shape[0], -1), model.classes.index(face_class))


def face_verdicts(logits: torch.Tensor, face: int) -> torch.Tensor:
    """'Face' where class ``face`` gets more than half the probability, from ... × draws × images × classes
    logits (the draws' probabilities averaged)."""
    return (logits.softmax(-1).mean(-3)[..., face] > 0.5).cpu()


def psychometric(model, faces: torch.Tensor, others: torch.Tensor,
                 signals: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), face_class: str = "faces",
                 seed: int = 0) -> dict:
    """The fraction of 'face' choices against signed visual signal (+s: faces at signal s, −s: non-face objects at
    s), each level from the same noise draws, so that curves with and without a stimulation (inside
    ``model.intervene``) differ only by it.  Returns the signed levels, the fractions and the images per level."""
    levels, fractions = [], []
    for s in sorted(set(signals)):
        for sign, batch in ((-1, others), (1, faces)):
            if s == 0 and sign == 1:
                continue  # at 0 signal both are pure noise: one point
            x = degrade(batch, s, seed)
            levels.append(sign * s)
            fractions.append(float(face_choices(model, x, face_class).float().mean()))
    order = np.argsort(levels)
    return {"signal": [float(levels[i]) for i in order], "face_fraction": [fractions[i] for i in order],
            "n": int(min(len(faces), len(others)))}
