"""Worker entrypoints: consumer apps to run with ``postdate worker MODULE:app``."""
