"""Sending results: C-STORE (with Storage Commitment) and STOW-RS."""
