"""Renal DICOM node: receive abdominal CT, segment renal parenchyma and cortex, return DICOM-SEG and TID 1500 SR."""

__version__ = "0.1.0"
