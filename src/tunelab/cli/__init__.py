"""The `tunelab` command, one module per command group: each parses arguments, calls the library and prints."""
from tunelab.cli import runs, compare, search, compose, serve, blackbox, assets, rlhf  # noqa: I001  (registered in this order: `tunelab --help` lists it)
from tunelab.cli.app import app, main

__all__ = ["app", "assets", "blackbox", "compare", "compose", "main", "rlhf", "runs", "search", "serve"]
