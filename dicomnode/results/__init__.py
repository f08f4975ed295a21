"""Results out: DICOM-SEG, TID 1500 SR, Secondary Capture pages, rejection notes, and the codes they use."""
