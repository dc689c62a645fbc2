"""Everything processes share: shared-memory segments, rings and the control block."""
