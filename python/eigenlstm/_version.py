"""The package version, in one place (the checkpoint header and ``el.config()`` read it)."""

__version__ = "0.1.0"
