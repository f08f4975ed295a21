"""Coded concepts used in the SEG and SR, each with its source.

Concepts that DICOM PS3.16 defines are taken from pydicom's copy of its concept dictionary (``pydicom.sr.codedict``),
not typed again: Kidney SCT 64033007, Left SCT 7771000, Right SCT 24028007, Laterality SCT 272741003, Volume
SCT 118565006, Anatomical Structure SCT 91723000, Tissue SCT 85756007, UCUM cm3, Finding DCM 121071. Only the
concepts below that PS3.16 lacks are written here.

Renal cortex appears in no DICOM context group; SCT 50403003 "Structure of cortex of kidney" is the code HL7's
TG263 mapping uses for it. Renal medulla has no code in the DICOM dictionary, in pydicom's concept dictionary or in
the TG-263 to SNOMED CT mapping, and no SNOMED CT browser was reachable to verify one. It is sent as Uberon's
UBERON:0000362 "renal medulla": UBERON is a coding scheme of PS3.16 Table 8-1 (dciodvfy knows the designator, so
no Coding Scheme Identification Sequence is needed), the code value is written without the "UBERON:" prefix as
dcmqi's and 3D Slicer's segmentation terminologies write Uberon codes, and the concept's identity was checked
against Uberon's own files as several public ontology projects cite it (renal medulla, part of kidney).

Renal parenchyma is what the model segments as the kidney (cortex and medulla, without sinus), so its segment and
SR group are typed Kidney (SCT 64033007, in CID 7151, 7154 and 7192) with a laterality modifier and labelled "renal
parenchyma", as TotalSegmentator codes its kidney masks (its totalsegmentator_snomed_mapping.csv). SCT 91772007
is not used: DICOM's segmentation context groups (CID 7151, 7166, 7191) give it the meaning "Organ", and no
context group holds a parenchyma concept.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.renal import Side, Structure

KIDNEY = codes.SCT.Kidney
LEFT = codes.SCT.Left
RIGHT = codes.SCT.Right
VOLUME = codes.SCT.Volume
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
RENAL_CORTEX = Code("50403003", "SCT", "Renal cortex")
RENAL_MEDULLA = Code("0000362", "UBERON", "Renal medulla")
CUBIC_CENTIMETRE = codes.UCUM.CubicCentimeter
#: DICOM PS3.16 CID 7464/DCM: "Finding" (121071), the concept name of the QC findings' text items. What is absent
#: on a side and why (``analysis/plan.py``: no kidney found, cut off by the field of view, withheld, not measured in
#: this phase) is such a TEXT item too: no concept for these reasons was found in PS3.16's context groups (the TID
#: 1500 groups have none for an absent measurement), so they are written in words.
FINDING = codes.DCM.Finding
#: The QC gate's verdict as a qualitative evaluation: DCM 111050 "Quality Assessment" valued from CID 6044, the
#: assessments DICOM's CAD templates give an input against a quality control standard. A result that fails QC and
#: is still sent (``qc.on_fail: flag``) is "usable" only after review, which the series description also says.
QC_RESULT = codes.DCM.QualityAssessment
QC_PASSED = codes.DCM.UsableMeetsTheQualityControlStandard
QC_REVIEW = codes.DCM.UsableDoesNotMeetTheQualityControlStandard

#: A volume's range (``segment/band.py``): two more Volume measurements in its group, derived as SCT 255605001
#: "Minimum" and SCT 56851009 "Maximum", concepts of PS3.16 CID 7464 "General Region of Interest Measurement
#: Modifier" (pydicom's concept dictionary), the TID 300 "Derivation" of a measurement; how the two were made is a
#: TEXT finding in the group, since DICOM has no concept for a model's probability threshold.
MINIMUM = codes.SCT.Minimum
MAXIMUM = codes.SCT.Maximum

#: The title of the node's rejection notes (IHE IOCM): DCM 113001 "Rejected for Quality Reasons", from PS3.16
#: CID 7010 "Key Object Selection Document Title". DICOM has no concept for "superseded"; IOCM sends a result its
#: maker no longer stands by as rejected for quality reasons. The reader accepts every rejection title of CID 7010.
REJECTED_FOR_QUALITY_REASONS = codes.DCM.RejectedForQualityReasons
REJECTION_TITLES = (
    REJECTED_FOR_QUALITY_REASONS,
    codes.DCM.RejectedForPatientSafetyReasons,
    codes.DCM.IncorrectModalityWorklistEntry,
    codes.DCM.DataRetentionPolicyExpired,
)

#: Follow-up (the change since the patient's prior result). DICOM has no concept for a change of volume, in percent
#: or per year; it has one for a quantitative difference between time points: SCT 442714003 "Difference in size",
#: PS3.16 CID 6133 and CID 6207 ("Quantitative Temporal Difference Type"), used as a NUM inferred from the prior and
#: current measurements in PS3.17's chest CAD example. The three changes share it and differ by unit: cm3, UCUM %
#: (PS3.16 CID 7181) and cm3/a (UCUM's year "a"; valid UCUM, in no CID, hence written here). The prior's volume is
#: SCT 118565006 "Volume" nested under each change (INFERRED FROM), with its study named by DCM 121018 "Procedure
#: Study Instance UID" (a UIDREF, as TID 1005 Procedure Context names a study) and DCM 111060 "Study Date".
DIFFERENCE_IN_SIZE = codes.SCT.FindingOfDifferenceInSize
PERCENT = codes.UCUM.Percent
CUBIC_CENTIMETRE_PER_YEAR = Code("cm3/a", "UCUM", "cubic centimeter per year")
PRIOR_STUDY_UID = codes.DCM.ProcedureStudyInstanceUID
STUDY_DATE = codes.DCM.StudyDate

SIDE_CODES: dict[str, Code] = {Side.LEFT: LEFT, Side.RIGHT: RIGHT}
STRUCTURE_CODES: dict[str, Code] = {Structure.PARENCHYMA: KIDNEY, Structure.CORTEX: RENAL_CORTEX, Structure.MEDULLA: RENAL_MEDULLA}
#: Recommended display colours (CIELab L*, a*, b*): cortex warm red, medulla yellow, parenchyma orange.
DISPLAY_LAB: dict[tuple[Structure, Side], tuple[float, float, float]] = {
    (Structure.CORTEX, Side.LEFT): (50.0, 60.0, 40.0),
    (Structure.CORTEX, Side.RIGHT): (45.0, 55.0, 30.0),
    (Structure.MEDULLA, Side.LEFT): (85.0, 0.0, 80.0),
    (Structure.MEDULLA, Side.RIGHT): (80.0, 5.0, 70.0),
    (Structure.PARENCHYMA, Side.LEFT): (70.0, 30.0, 65.0),
    (Structure.PARENCHYMA, Side.RIGHT): (65.0, 35.0, 60.0),
}
