"""``check``: run the gradient-masking checks on a model — attacks it (an unbounded PGD, and a PGD beside a result)
and reports with the helpers of ``attacks.checks``."""
from __future__ import annotations

import torch

from synth.errors import ConfigError

from .checks import blackbox_report, unbounded_eps, unbounded_report


def check(model, images: torch.Tensor, labels=None, result=None, *, norm: str = "linf", eps: float | None = None,
          steps: int = 20, repeats: int = 50, seed: int = 0) -> dict:
    """Run the two costly checks on a model and a batch: an unbounded attack (a budget that can paint any image,
    fixed PGD steps) must break nearly every image, and random search (foolbox's repeated additive noise, forward
    passes only) at budget ``eps`` must break nothing that PGD at ``eps`` leaves intact.  With an AttackResult
    ``result`` its norm, largest budget and verdicts are used, and the reports are added to ``result.checks``."""
    from .catalogue import run
    from .pgd import pgd

    if result is not None:
        norm, eps = result.norm, float(result.eps[torch.isfinite(result.eps)].max())
        labels = result.labels if labels is None else labels
    if eps is None:
        raise ConfigError("check needs eps, or an AttackResult to take it from")
    big = unbounded_eps(norm, images.shape[1:])
    unbounded = pgd(model, images, labels, big, norm=norm, steps=steps, step="pgd", seed=seed, progress=False)
    reports = unbounded_report(float(unbounded.success_rate[0]), big)
    white = result if result is not None else pgd(model, images, labels, eps, norm=norm, steps=steps, seed=seed,
                                                  progress=False)
    k = int((white.eps - eps).abs().argmin())
    noise = run(f"noise-{norm}", model, images, labels, eps, repeats=repeats)
    extra = int((noise.success[0] & ~white.success[k]).sum())
    reports.update(blackbox_report(extra, len(images), eps))
    if result is not None:
        result.checks.update(reports)
    return reports
