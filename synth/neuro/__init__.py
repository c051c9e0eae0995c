"""Neural experiments on the engine: readouts fit to recorded sites, a simulated subject, feature visualization
(``synthesize``), gradient-free evolution (XDream) and population control (Bashivan et al. 2019)."""
