"""A simulated animal for closed-loop experiments: sites that are units of another model, recorded with Poisson
spike-count noise, and how images are presented to it (a black box an evolution can only show images to)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from synth.engine.objectives import Objective
from synth.errors import ConfigError, UnknownNameError
from synth.files import tensor_digest
from synth.neuro.readouts import Responses, features
from synth.zoo.probe import ProbeModel


class Subject:
    """A simulated recording: ``n_sites`` responsive channels of ``layer`` of another model, as spike counts.

    A site's rate is ``baseline + (max_rate - baseline) · a / a95`` spikes/s, where ``a`` is the channel's spatially
    pooled response and ``a95`` its 95th percentile over the calibration images; trials are Poisson counts in a
    ``window``-second window, divided by the window (HvM-like 70–170 ms: 0.1 s).
    """

    def __init__(self, model: ProbeModel, layer: str, calibration: torch.Tensor, n_sites: int = 40, seed: int = 0,
                 baseline: float = 5.0, max_rate: float = 100.0, window: float = 0.1):
        self.model, self.layer, self.window = model, model.layer(layer), window
        self.baseline, self.max_rate = baseline, max_rate
        resp = features(model, calibration, self.layer, pooled=True)
        spread = resp.std(0)
        live = torch.nonzero(spread > 1e-3 * spread.max()).flatten()
        if len(live) < n_sites:
            raise ConfigError(f"{layer!r} of {model.name} has only {len(live)} responsive channels, "
                              f"asked for {n_sites}")
        g = torch.Generator().manual_seed(seed)
        self.channels = sorted(live[torch.randperm(len(live), generator=g)[:n_sites]].tolist())
        self.scale = resp[:, self.channels].quantile(0.95, dim=0).clamp_min(1e-6)
        self.sites = [f"site{c}" for c in self.channels]
        self.input_size = model.input_size or calibration.shape[-1]

    def __str__(self) -> str:
        return f"subject({self.model.name}:{self.layer}, {len(self.sites)} sites)"

    def fingerprint(self) -> str:
        """Everything that defines the subject's responses: its model's weights, sites, calibration and rates."""
        return (f"{self} weights sha256:{self.model.weights_digest()[:16]} channels {self.channels} scale "
                f"sha256:{tensor_digest(self.scale)} rates {self.baseline:g}-{self.max_rate:g}/s "
                f"window {self.window:g}")

    def site(self, site: str | int) -> int:
        """The column of a site given by name ('site40') or by position (0 … n_sites − 1)."""
        if isinstance(site, (int, np.integer)) and not isinstance(site, bool):
            if not 0 <= site < len(self.sites):
                raise ConfigError(f"site index {site} is out of range: the subject has {len(self.sites)} sites")
            return int(site)
        if str(site) not in self.sites:
            raise UnknownNameError("site of the subject", str(site), self.sites)
        return self.sites.index(str(site))

    def rates(self, images: torch.Tensor) -> np.ndarray:
        """Expected firing rates (images × sites, spikes/s)."""
        a = features(self.model, images, self.layer, pooled=True)[:, self.channels]
        return (self.baseline + (self.max_rate - self.baseline) * a / self.scale).clamp_min(0).double().numpy()

    def record(self, images: torch.Tensor, repeats: int, seed: int = 0) -> np.ndarray:
        """Trial responses (images × sites × repeats, spikes/s) with Poisson spike-count noise."""
        lam = self.rates(images)[..., None] * self.window
        counts = np.random.default_rng(seed).poisson(np.repeat(lam, repeats, axis=2))
        return counts / self.window


class Presented(Objective):
    """Fitness from a black box: a ``Subject``'s trial-mean response at one site to each image over ``repeats``
    presentations, fresh Poisson noise at every call.  It reads only the images (the 'input' pseudo-layer), asks
    the subject under ``torch.no_grad`` and returns plain numbers: no gradient can flow through it."""

    layers = ("input",)

    def __init__(self, subject: Subject, site: str | int, repeats: int = 1, seed: int = 0):
        self.subject, self.index, self.repeats, self.seed, self.calls = subject, subject.site(site), repeats, seed, 0

    def __str__(self) -> str:
        return f"presented({self.subject.sites[self.index]}, repeats={self.repeats})"

    def fingerprint(self) -> str:
        return f"{self} of {self.subject.fingerprint()}, seed {self.seed}"

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def score(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        images = acts["input"]
        with torch.no_grad():
            trials = self.subject.record(images.detach(), self.repeats, seed=[self.seed, self.calls])
        self.calls += 1
        return torch.as_tensor(trials[:, self.index].mean(-1), dtype=torch.float32, device=images.device)


def display(size: int) -> ProbeModel:
    """The screen a black box is shown images on: a pseudo-model with nothing but the 'input' layer, so the
    engine can run an evolution whose fitness (``Presented``) comes from outside any model it holds."""
    return ProbeModel(nn.Identity(), name="display", classes=(), input_size=size)


def simulate_recording(model: ProbeModel, layer: str = "IT", n_images: int = 640, n_sites: int = 40,
                       repeats: int = 4, split: str = "train", seed: int = 0) -> Responses:
    """A recording session of a simulated ``Subject`` on embedded images, with ids 'split:index' that
    ``readouts.embedded_images`` (and ``phosphene readout fit``) resolve: a stand-in for a monkey's data."""
    from synth.world.data import render

    if n_images < 10 or repeats < 1:
        raise ConfigError(f"need at least 10 images and 1 repeat, got {n_images} and {repeats}")
    images = render(n_images, split, workers=2).tensor()
    subject = Subject(model, layer, images, n_sites=n_sites, seed=seed)
    return Responses([f"{split}:{i}" for i in range(n_images)], subject.record(images, repeats, seed), subject.sites)
