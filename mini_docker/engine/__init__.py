"""The engine: containers and their lifecycle, shims, logs, events and stats (chapter 8)."""
