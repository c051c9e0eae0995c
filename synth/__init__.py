"""phosphene's core: models and layer access, the embedded image world, and the one optimization engine.

The public API a user holds in their head::

    model = synth.load_model("toy-standard")
    result = synth.synthesize(model, "stretch(IT:12)", steps=256, seed=7)
    result.save("out/")
"""
from synth.version import __version__

# The public names and where each lives: imported on first use (PEP 562), so that `phosphene --help` and the
# light modules (synth.errors, synth.version) answer without loading torch.
_PUBLIC = {
    "Box": ("synth.engine.constraints", "Box"),
    "Contrast": ("synth.engine.constraints", "Contrast"),
    "Grayscale": ("synth.engine.constraints", "Grayscale"),
    "LpBall": ("synth.engine.constraints", "LpBall"),
    "Mask": ("synth.engine.constraints", "Mask"),
    "optimize": ("synth.engine.loop", "optimize"),
    "max_batch": ("synth.engine.memory", "max_batch"),
    "Objective": ("synth.engine.objectives", "Objective"),
    "parse": ("synth.engine.objectives", "parse"),
    "Result": ("synth.engine.results", "Result"),
    "CheckpointError": ("synth.errors", "CheckpointError"),
    "ConfigError": ("synth.errors", "ConfigError"),
    "ImageError": ("synth.errors", "ImageError"),
    "PhospheneError": ("synth.errors", "PhospheneError"),
    "UnknownNameError": ("synth.errors", "UnknownNameError"),
    "read_png": ("synth.files", "read_png"),
    "evolve": ("synth.neuro.evolve", "evolve"),
    "Readout": ("synth.neuro.readouts", "Readout"),
    "load_responses": ("synth.neuro.readouts", "load_responses"),
    "fit_readout": ("synth.neuro.readouts", "fit"),
    "synthesize": ("synth.neuro.synthesis", "synthesize"),
    "CATEGORIES": ("synth.world.data", "CATEGORIES"),
    "ImageBatch": ("synth.world.data", "ImageBatch"),
    "ObjectImages": ("synth.world.data", "ObjectImages"),
    "World": ("synth.world.data", "World"),
    "localizer": ("synth.world.data", "localizer"),
    "render": ("synth.world.data", "render"),
    "available_generators": ("synth.zoo.generators", "available_generators"),
    "load_generator": ("synth.zoo.generators", "load_generator"),
    "available_models": ("synth.zoo.models", "available_models"),
    "default_device": ("synth.zoo.models", "default_device"),
    "load_model": ("synth.zoo.models", "load_model"),
    "Intervention": ("synth.zoo.probe", "Intervention"),
    "ProbeModel": ("synth.zoo.probe", "ProbeModel"),
}

__all__ = ["Box", "CATEGORIES", "CheckpointError", "ConfigError", "Contrast", "Grayscale", "ImageBatch", "ImageError",
           "Intervention", "LpBall", "Mask", "Objective", "ObjectImages", "PhospheneError", "ProbeModel", "Readout",
           "Result", "UnknownNameError", "World", "available_generators", "available_models", "default_device",
           "evolve", "fit_readout", "load_generator", "load_model", "load_responses", "localizer", "max_batch",
           "optimize", "parse", "read_png", "render", "synthesize", "__version__"]


def __getattr__(name: str):
    """A public name, imported from its module on first use and kept."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'synth' has no attribute {name!r}")
    import importlib

    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, loaded or not."""
    return sorted(set(globals()) | set(_PUBLIC))
