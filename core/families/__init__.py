"""The model families: one folder per family, each holding only what is its own (shared blocks are in core/blocks)."""
