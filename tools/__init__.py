"""Developer scripts (not installed): run as `python tools/NAME.py`, from the Makefile."""
