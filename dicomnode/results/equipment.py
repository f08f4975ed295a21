"""Who made a result: the node as manufacturer, and one Contributing Equipment item per algorithm that made a
structure (shared by the SEG and the SR)."""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from dicomnode import __version__
from dicomnode.analysis.measure import Measurements

MANUFACTURER = "dicomnode"
#: Appended to the series descriptions of results that failed QC and were sent for review (``qc.on_fail: flag``).
QC_REVIEW_SUFFIX = " QC: review"


def contributing_equipment(measurements: Measurements) -> list[hd.ContributingEquipment]:
    """One Contributing Equipment item per algorithm that made a structure (PS3.3 C.7.5.1 allows several)."""
    distinct = {(a.name, a.version): a for a in measurements.algorithms.values()}
    return [
        hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=algorithm.name[:64],
            software_versions=algorithm.version or __version__,
            contribution_description=algorithm.description[:64],
        )
        for algorithm in distinct.values()
    ]
