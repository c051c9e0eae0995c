"""Result: what an optimization produced — images, score history, achieved activations and the full recipe.

``save(folder)`` writes one record (``synth.files.save_record``): one PNG per image with the recipe in PNG text
chunks, ``result.json`` with the recipe, scores and history, and ``result.pt`` with the exact float tensors (the
full activations of the layers the run read, and the target tensors its objective names by digest);
``Result.load(folder, model)`` reads them back and checks that ``model`` has the weights the result was made with.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.files import check_weights, load_record, save_record

FORMAT_VERSION = 5  # 5: one record format (synth.files.save_record): kind and the .pt's digest in result.json
WEIGHTS_DIGEST_SINCE = 4  # 4: 'weights_sha256' is the digest of the model's weights (ProbeModel.weights_digest)


@dataclass
class Result:
    """Images (N×3×H×W, CPU, [0,1]), per-step scores (steps×N), final scores (N), activations, metadata; with a
    stopping rule, which returned images meet it (``success``); the best-scoring iterate of each image (``best``,
    ``best_scores``); the per-image gradient norm at every step (``grad_norm``, NaN once an image stopped);
    under an Lp ball, each returned image's distance from its center (``distance``); the target tensors the
    objective's text names by digest (``targets``); and for a generator parametrization the latent codes of the
    returned and of the best images (``codes``, ``best_codes``: N × latent), which remake them.  ``activations``
    holds the full response of every layer the run read (N×C×H×W for a conv layer); ``population(layer)`` gives
    its spatial means."""

    images: torch.Tensor
    history: torch.Tensor
    scores: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    success: torch.Tensor | None = None
    best: torch.Tensor | None = None
    best_scores: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None
    distance: torch.Tensor | None = None
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: torch.Tensor | None = None
    best_codes: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def rows(self, keep: torch.Tensor) -> Result:
        """The images ``keep`` of this run alone (per-image tensors and per-step traces); what ``with_rows``
        takes in.  Metadata and targets are this run's."""
        pick = lambda t: t[keep] if t is not None else None
        cols = lambda t: t[:, keep] if t is not None else None
        return Result(self.images[keep], cols(self.history), self.scores[keep],
                      {k: v[keep] for k, v in self.activations.items()}, self.metadata, pick(self.success),
                      pick(self.best), pick(self.best_scores), cols(self.grad_norm), pick(self.distance),
                      dict(self.targets), pick(self.codes), pick(self.best_codes))

    def with_rows(self, index: torch.Tensor, other: Result) -> Result:
        """A copy whose images ``index`` are replaced by ``other``'s images 0 … len(index)−1 (a rerun of some
        images, e.g. a metamer retried); the per-step traces are padded to the longer run (last score held,
        gradient norm NaN once stopped), and the metadata stays this run's."""
        index = torch.as_tensor(index, dtype=torch.long).flatten()
        if len(other) != len(index):
            raise ConfigError(f"{len(other)} rerun images for {len(index)} rows")

        def rows(a, b):
            if a is None or b is None:
                return a
            out = a.clone()
            out[index] = b.to(out.dtype)
            return out

        def steps(a, b, fill):
            if a is None or b is None:
                return a
            t = max(a.shape[0], b.shape[0])
            pad = lambda x: torch.cat([x, (x[-1:] if fill is None else torch.full_like(x[:1], fill))
                                       .expand(t - x.shape[0], *x.shape[1:])]) if 0 < x.shape[0] < t else x
            out = pad(a).clone()
            out[:, index] = pad(b).to(out.dtype)
            return out

        return Result(rows(self.images, other.images), steps(self.history, other.history, None),
                      rows(self.scores, other.scores),
                      {k: rows(v, other.activations.get(k)) for k, v in self.activations.items()},
                      dict(self.metadata), rows(self.success, other.success), rows(self.best, other.best),
                      rows(self.best_scores, other.best_scores), steps(self.grad_norm, other.grad_norm, math.nan),
                      rows(self.distance, other.distance), dict(self.targets), rows(self.codes, other.codes),
                      rows(self.best_codes, other.best_codes))

    def population(self, layer: str) -> torch.Tensor:
        """N×C responses of a layer the run read: spatial means of a conv layer, the layer itself otherwise."""
        from synth.engine.objectives import population

        if layer not in self.activations:
            raise UnknownNameError("layer of this result (it holds the activations of the layers its run read)", layer,
                                   self.activations)
        return population(self.activations[layer])

    def save(self, folder: str | os.PathLike, prefix: str = "image", pngs: bool = True) -> list[Path]:
        """Write the record ``result`` in ``folder`` (``synth.files.save_record``): PNGs with the recipe in text
        chunks (``pngs=False`` leaves them to the caller), ``result.pt`` and ``result.json``; every file appears
        atomically.  Returns the PNGs' paths."""
        images = [(f"{prefix}_{i:03d}.png", img, {**self.metadata, "index": i, "score": float(self.scores[i])})
                  for i, img in enumerate(self.images)] if pngs else []
        sidecar = {"metadata": self.metadata, "scores": self.scores.tolist(), "history": self.history.tolist(),
                   "success": self.success.tolist() if self.success is not None else None}
        tensors = {"images": self.images, "history": self.history, "scores": self.scores,
                   "activations": self.activations, "success": self.success, "best": self.best,
                   "best_scores": self.best_scores, "grad_norm": self.grad_norm, "distance": self.distance,
                   "targets": self.targets, "codes": self.codes, "best_codes": self.best_codes}
        return save_record(Path(folder) / "result", "result", FORMAT_VERSION, tensors, sidecar,
                           weights_sha256=self.metadata.get("weights_sha256"), pngs=images)

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None) -> Result:
        """Read a saved result back (tensors from ``result.pt``, recipe from ``result.json``) and make its targets
        known again, so its objective text parses; with ``model``, refuse one whose weights differ from those the
        result was made with.  Files written before results held success, best iterates, gradient norms or
        targets load with those left empty."""
        from synth.engine.objectives import register_target

        folder = Path(folder)
        tensors, sidecar = load_record(folder / "result", "result", FORMAT_VERSION)
        meta = sidecar["metadata"]
        if model is not None:
            if sidecar.get("format", 0) < WEIGHTS_DIGEST_SINCE:
                raise CheckpointError(f"{folder} was saved by an older phosphene, which recorded the weights file's "
                                      "digest rather than the weights': it cannot be checked against a model; load it "
                                      "without one")
            check_weights(meta, model, folder)
        targets = tensors.get("targets") or {}
        for t in targets.values():
            register_target(t)
        return cls(tensors["images"], tensors["history"], tensors["scores"], tensors["activations"], meta,
                   success=tensors.get("success"), best=tensors.get("best"), best_scores=tensors.get("best_scores"),
                   grad_norm=tensors.get("grad_norm"), distance=tensors.get("distance"), targets=targets,
                   codes=tensors.get("codes"), best_codes=tensors.get("best_codes"))
