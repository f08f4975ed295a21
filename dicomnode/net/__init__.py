"""DICOM networking: the upper layer state machine, DIMSE messages and the association acceptor."""
