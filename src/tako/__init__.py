"""Tako: deploy web apps to your own Linux servers over SSH."""

__version__ = "0.1.0"
