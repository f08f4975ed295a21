"""Images in: loading a series into HU, the anatomy landmarks, the aorta's phase check and the series selection."""
