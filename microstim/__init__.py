"""Micro-stimulation of topographic models: selectivity maps on a cortical sheet, face patches, a current-dependent
spread of activation around a site (and muscimol-like inactivation), the behavioural read-out they shift, and
Afraz, Kiani & Esteky (2006) end to end.

    model = synth.load_model("toy-topo-dense")   # synth.zoo.catalog.TOPOGRAPHIC
    sheet = microstim.sheet_of(model, "IT")
    t = microstim.localizer_maps(model, "IT")["faces_vs_objects"]
    stimulated = model.intervene(microstim.microstimulation(sheet, (5.0, 5.0), current_ua=50))
    microstim.psychometric(stimulated, faces, objects)
    microstim.run_afraz(model, "runs/afraz")

The sheets themselves (units' positions, TDANN's spatial loss) belong to the model: ``synth.zoo.sheets``.
"""
from synth.zoo.sheets import Sheet, sheet_of

from .afraz import afraz, current_for_spread, electrode_selectivity, plot_afraz, run_afraz
from .behavior import degrade, face_choices, psychometric
from .maps import (
                   face_patches,
                   localizer_maps,
                   null_threshold,
                   outline_patches,
                   patches,
                   plot_sheet,
                   plot_sheets,
                   selectivity,
                   sheet_image,
                   smoothness,
                   topography_metrics,
)
from .stimulation import inactivation, microstimulation, spread_mm

__all__ = ["Sheet", "afraz", "current_for_spread", "degrade", "electrode_selectivity", "face_choices", "face_patches",
           "inactivation", "localizer_maps", "microstimulation", "null_threshold", "outline_patches", "patches",
           "plot_afraz", "plot_sheet", "plot_sheets", "psychometric", "run_afraz", "selectivity", "sheet_image",
           "sheet_of", "smoothness", "spread_mm", "topography_metrics"]
