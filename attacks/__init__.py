"""White-box attacks on models of the ventral stream, all on phosphene's one optimization engine.

    r = attacks.pgd(model, images, labels, eps=["1/255", "2/255", "4/255"])   # an ε sweep in one call
    r.accuracy, r.sheet("sheet.png"), r.plot("curve.png"), r.save("out/")
    attacks.run("cw-l2", model, images, labels)           # foolbox's catalogue, same result type
    attacks.evaluate(model, images, labels, eps="4/255")  # the reliable verdict: APGD-CE, APGD-T, Square
    attacks.minimal(model, images, labels)                # per-image smallest ε and the accuracy curve
    attacks.site_attack(model, images, "IT:12", eps=["1/255", "4/255"])   # neural sites (Guo et al. 2022)
    attacks.wormholes({"standard": m1, "robust": m2}, images, labels)    # Gaziv et al. 2023
    attacks.check(model, images, labels, result)          # gradient-masking checks
    attacks.robustness_table(["toy-standard", "toy-vone"]).save("out/")   # clean / white-box / corruption table
"""
from .audit import check
from .behavior import wormholes
from .catalogue import CATALOGUE, available, run
from .checks import GradientMaskingWarning
from .common import StochasticModelWarning, parse_eps
from .evaluate import evaluate
from .minimal import minimal
from .pgd import pgd
from .result import AttackResult
from .robustness import RobustnessTable, image_folder, robustness_table
from .sites import relative_change, site_attack
from .square import square

__all__ = ["AttackResult", "CATALOGUE", "GradientMaskingWarning", "StochasticModelWarning", "available", "check",
           "evaluate", "RobustnessTable", "image_folder", "minimal", "parse_eps", "pgd", "relative_change",
           "robustness_table", "run", "site_attack", "square", "wormholes"]
