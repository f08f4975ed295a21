"""DICOM networking in the standard's layers: PDUs (upper_layer), DIMSE commands (dimse), association control
(association), the services on an association (services), data sets written as they arrive (incoming), and the
transport with admission (acceptor)."""
