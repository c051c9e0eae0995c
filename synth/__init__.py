"""phosphene's core: models and layer access, the embedded image world, and the one optimization engine.

The public API a user holds in their head::

    model = synth.load_model("toy-standard")
    result = synth.synthesize(model, "stretch(IT:12)", steps=256, seed=7)
    result.save("out/")
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phosphene")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from .constraints import Box, Contrast, Grayscale, LpBall, Mask  # noqa: E402
from .data import CATEGORIES, ImageBatch, ObjectImages, World, localizer, render  # noqa: E402
from .engine import optimize  # noqa: E402
from .errors import CheckpointError, ConfigError, ImageError, PhospheneError, UnknownNameError  # noqa: E402
from .evolve import evolve  # noqa: E402
from .generators import available_generators, load_generator  # noqa: E402
from .memory import max_batch  # noqa: E402
from .models import available_models, default_device, load_model  # noqa: E402
from .objectives import Objective, parse  # noqa: E402
from .probe import Intervention, ProbeModel  # noqa: E402
from .readouts import Readout, load_responses  # noqa: E402
from .readouts import fit as fit_readout  # noqa: E402
from .results import Result, read_png  # noqa: E402
from .synthesis import synthesize  # noqa: E402

__all__ = ["Box", "CATEGORIES", "CheckpointError", "ConfigError", "Contrast", "Grayscale", "ImageBatch", "ImageError",
           "Intervention", "LpBall", "Mask", "Objective", "ObjectImages", "PhospheneError", "ProbeModel", "Readout", "Result",
           "UnknownNameError", "World", "available_generators", "available_models", "default_device", "evolve", "fit_readout", "load_generator", "load_model",
           "load_responses", "localizer", "max_batch", "optimize", "parse", "read_png", "render", "synthesize",
           "__version__"]
