"""Coded concepts used in the SEG and SR, each with its source.

Concepts that DICOM PS3.16 defines are taken from pydicom's copy of its concept dictionary (``pydicom.sr.codedict``),
not typed again: Kidney SCT 64033007, Left SCT 7771000, Right SCT 24028007, Laterality SCT 272741003, Volume
SCT 118565006, Anatomical Structure SCT 91723000, Tissue SCT 85756007, UCUM cm3, Finding DCM 121071. Only the
concepts below that PS3.16 lacks are written here.

Renal cortex appears in no DICOM context group; SCT 50403003 "Structure of cortex of kidney" is the code HL7's
TG263 mapping uses for it. Renal medulla has no code in the DICOM dictionary and no SNOMED CT browser was
reachable to verify one, so it is sent under this node's private coding scheme (DICOM PS3.3 8.2: a "99" prefix
marks a private scheme) rather than under an unverified SNOMED code: no concept for it is in DICOM's context groups,
in pydicom's concept dictionary or in the TG-263 to SNOMED CT mapping searched here.

Renal parenchyma is what the model segments as the kidney (cortex and medulla, without sinus), so its segment and
SR group are typed Kidney (SCT 64033007, in CID 7151, 7154 and 7192) with a laterality modifier and labelled "renal
parenchyma", as TotalSegmentator codes its kidney masks (its totalsegmentator_snomed_mapping.csv). SCT 91772007
is not used: DICOM's segmentation context groups (CID 7151, 7166, 7191) give it the meaning "Organ", and no
context group holds a parenchyma concept.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

KIDNEY = codes.SCT.Kidney
LEFT = codes.SCT.Left
RIGHT = codes.SCT.Right
LATERALITY = codes.SCT.Laterality
VOLUME = codes.SCT.Volume
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
TISSUE = codes.SCT.Tissue
RENAL_CORTEX = Code("50403003", "SCT", "Renal cortex")
PRIVATE_SCHEME = "99RENALNODE"
#: Declared in the Coding Scheme Identification Sequence (0008,0110) of every object that uses the private codes.
PRIVATE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME, name="dicomnode renal volumetry codes", responsible_organization="dicomnode project"
)
RENAL_MEDULLA = Code("RM001", PRIVATE_SCHEME, "Renal medulla")
CUBIC_CENTIMETRE = codes.UCUM.CubicCentimeter
#: DICOM PS3.16 CID 7464/DCM: "Finding" (121071), the concept name of the QC findings' text items.
FINDING = codes.DCM.Finding
#: The QC gate's verdict as a qualitative evaluation. No DICOM or SNOMED concept names an automated plausibility
#: check of a segmentation's output, so these are private (PS3.3 8.2).
QC_RESULT = Code("QC001", PRIVATE_SCHEME, "Automated quality control")
QC_PASSED = Code("QC002", PRIVATE_SCHEME, "Passed")
QC_REVIEW = Code("QC003", PRIVATE_SCHEME, "Review required")

SIDE_CODES = {"left": LEFT, "right": RIGHT}
STRUCTURE_CODES = {"parenchyma": KIDNEY, "cortex": RENAL_CORTEX, "medulla": RENAL_MEDULLA}
#: Recommended display colours (CIELab L*, a*, b*): cortex warm red, medulla yellow, parenchyma orange.
DISPLAY_LAB = {
    ("cortex", "left"): (50.0, 60.0, 40.0),
    ("cortex", "right"): (45.0, 55.0, 30.0),
    ("medulla", "left"): (85.0, 0.0, 80.0),
    ("medulla", "right"): (80.0, 5.0, 70.0),
    ("parenchyma", "left"): (70.0, 30.0, 65.0),
    ("parenchyma", "right"): (65.0, 35.0, 60.0),
}
