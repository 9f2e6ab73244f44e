"""The position encodings, one file each: its params keys, its rules and its class (built on first use, so the
settings are checked without torch). `catalogue` finds them; the model builds the one model.pos names."""
