"""Training recipes, a front-end of the core: the embedded ventral models (``recipes``) and generators
(``generators``), each writing weights, a model card and its measurements."""
