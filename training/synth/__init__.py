"""Synthetic training cases on real anatomy (``dicomnode-train synth``), in the manner of SynthSeg.

Each case takes one of many real patients' label maps (:mod:`training.anatomies`, and the shared real CT's in
:mod:`training.synth_anatomy`; :mod:`.sources`), gives it two real kidneys of other people (KiTS19 shapes, rescaled
and placed at the patient's own kidney sites, sometimes lower, rotated, small or large: :mod:`.kidney`), a
synthesized cortex, medulla, sinus and pelvis inside each (:mod:`.interior`), renal vessels (:mod:`.vessels`),
lesions and cysts in the liver and spleen (:mod:`.lesions`), and a random affine + elastic deformation
(:mod:`.deform`). Its field of view (:mod:`.view`) may cut a kidney at any edge or hold no kidney at all. The label
map is then rendered as CT: per-structure HU drawn for a contrast phase (or fully at random) and texture
(:mod:`.hu`), partial-volume blur of a random acquisition, noise, a smooth offset field and occasional streaks
(:mod:`.acquire`). :mod:`.case` puts these together and writes the cases.
Each case is deterministic from its seed. Arrays are ``[z, y, x]`` in LPS; spacings are (x, y, z) mm.
"""

from training.synth.case import SynthCase, make_synth_case, volumes_ml, write_synth_cases
from training.synth.interior import InteriorStyle
from training.synth.sources import DEFAULT_CACHE, DEFAULT_DATA, Anatomy, AnatomySet, Sources, anatomy_names, load_sources
from training.synth.tissues import CORTEX, MEDULLA
from training.synth.view import OutputGrid, View, view_shares

__all__ = [
    "CORTEX",
    "DEFAULT_CACHE",
    "DEFAULT_DATA",
    "MEDULLA",
    "Anatomy",
    "AnatomySet",
    "InteriorStyle",
    "OutputGrid",
    "Sources",
    "SynthCase",
    "View",
    "anatomy_names",
    "load_sources",
    "make_synth_case",
    "view_shares",
    "volumes_ml",
    "write_synth_cases",
]
