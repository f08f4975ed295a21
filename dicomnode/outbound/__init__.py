"""Outbound: results saved, superseded results withdrawn, delivery by DIMSE or STOW-RS, Storage Commitment."""
