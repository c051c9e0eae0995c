"""phosphene's core: models and layer access, the embedded image world, and the one optimization engine.

The public API a user holds in their head::

    model = synth.load_model("toy-standard")
    result = synth.synthesize(model, "stretch(IT:12)", steps=256, seed=7)
    result.save("out/")
"""
from synth.engine.constraints import Box, Contrast, Grayscale, LpBall, Mask
from synth.engine.loop import optimize
from synth.engine.memory import max_batch
from synth.engine.objectives import Objective, parse
from synth.engine.results import Result
from synth.errors import CheckpointError, ConfigError, ImageError, PhospheneError, UnknownNameError
from synth.files import read_png
from synth.neuro.evolve import evolve
from synth.neuro.readouts import Readout, load_responses
from synth.neuro.readouts import fit as fit_readout
from synth.neuro.synthesis import synthesize
from synth.version import __version__  # noqa: F401
from synth.world.data import CATEGORIES, ImageBatch, ObjectImages, World, localizer, render
from synth.zoo.generators import available_generators, load_generator
from synth.zoo.models import available_models, default_device, load_model
from synth.zoo.probe import Intervention, ProbeModel

__all__ = ["Box", "CATEGORIES", "CheckpointError", "ConfigError", "Contrast", "Grayscale", "ImageBatch", "ImageError",
           "Intervention", "LpBall", "Mask", "Objective", "ObjectImages", "PhospheneError", "ProbeModel", "Readout",
           "Result", "UnknownNameError", "World", "available_generators", "available_models", "default_device",
           "evolve", "fit_readout", "load_generator", "load_model", "load_responses", "localizer", "max_batch",
           "optimize", "parse", "read_png", "render", "synthesize", "__version__"]
