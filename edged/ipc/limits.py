"""Sizes fixed for the daemon's life, shared by config validation and the control block."""

MAX_SOURCES = 8  # capture workers (one per source); rows of the control block
