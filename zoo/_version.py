"""The version of medzoo, importable without importing torch (``zoo --version``, Hub request headers)."""

__version__ = "0.1.0"
