"""Measurement and the QC gate: kidneys picked, their volumes, and every plausibility rule."""
