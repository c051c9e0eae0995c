"""Hashes of a fixed set of runs through the public API: the same code gives the same hashes, bit for bit, on one
machine with one set of libraries.  Run it before and after a change that must not change behaviour (a move, a
refactor) and compare: ``.venv/bin/python tests/hash_runs.py > before.json``."""
import hashlib
import json
import sys

import torch

import attacks
import metamers
import synth
from synth.engine.params import Pixels


def digest(*tensors: torch.Tensor) -> str:
    """sha256 of tensors' bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def runs() -> dict[str, str]:
    """Each run's images, scores and history, hashed."""
    torch.set_num_threads(1)
    std = synth.load_model("toy-standard", device="cpu")
    vone = synth.load_model("toy-vone", device="cpu")
    x = synth.render(4, "test", start=100).tensor()
    y = torch.tensor([0, 1, 2, 3])
    out = {}
    r = synth.synthesize(std, "stretch(IT:12) + 0.1*diversity(V4)", n=2, steps=24, seed=7, progress=False)
    out["synthesize fourier+transforms"] = digest(r.images, r.scores, r.history, r.best)
    r = synth.synthesize(std, "onehot(IT:3)", n=1, param="pixels", steps=12, seed=1, transforms=None, progress=False)
    out["synthesize pixels"] = digest(r.images, r.scores, r.history)
    ball = synth.LpBall(x, torch.tensor([1.0, 2.0, 4.0, 8.0]) / 255)
    r = synth.optimize(std, "norm(IT)", Pixels(x),
                       constraints=[ball, synth.Box()], step="apgd", lr=ball.eps * 2, steps=10, random_start=True,
                       seed=3, progress=False)
    out["optimize apgd per-image ball"] = digest(r.images, r.scores, r.history, r.grad_norm)
    for opt in ("genetic", "cmaes"):
        r = synth.evolve(std, "IT:5", optimizer=opt, population=8, generations=6, seed=2, progress=False)
        out[f"evolve {opt}"] = digest(r.images, r.scores, r.history, r.best)
    m = metamers.generate(std, x[:2], "V4", steps=30, null=synth.render(16, "val").tensor(), retries=1,
                          progress=False)
    out["metamers"] = digest(m.images, m.run.history)
    a = attacks.pgd(std, x, y, eps=["1/255", "4/255"], steps=6, seed=4, progress=False)
    out["pgd sweep"] = digest(a.adversarial, a.scores)
    a = attacks.pgd(vone, x[:2], y[:2], eps="2/255", steps=4, eot=2, seed=4, progress=False)
    out["pgd noisy eot"] = digest(a.adversarial, a.scores)
    a = attacks.site_attack(std, x[:2], "IT:12", eps=["2/255"], steps=5, progress=False)
    out["site attack"] = digest(a.adversarial, a.scores)
    a = attacks.minimal(std, x[:2], y[:2], steps=5, rounds=3, progress=False)
    out["minimal"] = digest(a.adversarial, a.distance)
    return out


if __name__ == "__main__":
    json.dump(runs(), sys.stdout, indent=1)
    print()
