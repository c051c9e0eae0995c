"""The one optimization loop (``loop.optimize``) and what it composes: objectives, parametrizations, constraints,
transforms, stopping rules, step rules, results and memory planning.  It imports nothing from the world, the
experiments or the front-ends."""
