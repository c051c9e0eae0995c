"""The embedded image world: procedurally drawn objects (eight categories, faces among them) with pose, position,
scale and background recorded as metadata, the train / val / test splits, and the localizer's controls."""
