"""What a kidney is, in figures: where it lies, its volume and its attenuation. Measurement uses them to pick kidneys
among predicted components, and the QC gate's defaults (``config.QCConfig``) are the same figures."""

from __future__ import annotations

#: Where a kidney's centre lies relative to the vertebra's centre on its slices (mm): to either side, and from in
#: front (-) to behind (+). Used to pick kidneys among predicted components and, by default, by QC.
KIDNEY_LATERAL_MM, KIDNEY_ANTEROPOSTERIOR_MM = (20.0, 150.0), (-90.0, 40.0)
#: Parenchyma volume (ml) of a kidney: 416 hand-drawn KiTS19 kidneys measure 42.7-430.1 ml (tumour excluded;
#: ``training/kits19_priors.json``). Used to pick kidneys and, by default, by QC.
KIDNEY_ML = (40.0, 450.0)
#: Mean attenuation (HU) renal parenchyma can have in any phase; a component outside it is bone, calcification or
#: excreted contrast, not a kidney. Used to pick kidneys and, by default, by QC.
KIDNEY_HU = (0.0, 350.0)
#: The least of a kidney (ml) worth keeping: a quarter of the smallest of those KiTS19 kidneys (43 ml). A component
#: of a coarse pass or of the localizer below it is a tile artefact, and so is a component the image's edge cuts.
KIDNEY_PART_ML = 10.0
