"""Model metamers (Feather et al. 2023) on phosphene's one engine: images whose activations at one stage of a
model match a natural image's, judged by Feather's criterion and a match-quality target.

    r = metamers.generate(model, references, "IT")     # one metamer per reference, each stops when it passes
    r.passed, r.stats["V4"], r.sheet("sheet.png"), r.save("out/")
    metamers.MetamerResult.load("out/", model)         # refuses other weights; r.rescore(model) judges again
"""
from .criterion import ERROR_TARGET, MetamerStop, Null, judge, nse, spearman
from .generate import MetamerResult, generate, judge_all, null_images, stages

__all__ = ["ERROR_TARGET", "MetamerResult", "MetamerStop", "Null", "generate", "judge", "judge_all", "nse",
           "null_images", "spearman", "stages"]
