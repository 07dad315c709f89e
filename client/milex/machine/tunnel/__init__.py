"""The per-machine background tunnel: its service process, and its control from commands."""
