"""The `tako` command line: click commands, one module per noun; `main.py` is the entry point."""
