"""The model zoo: ``load_model`` and ``ProbeModel`` (named layers, brain areas, forks, interventions, weights
digests), safe checkpoint reading, the architectures (the embedded ventral net, CORnet, VOneNet, DeePSiM and the
embedded generators) and a topographic model's cortical sheets."""
