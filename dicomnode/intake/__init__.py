"""Intake: the DICOM receiver (C-STORE, Storage Commitment requests handed to outbound's commitment), and when a study is complete."""
