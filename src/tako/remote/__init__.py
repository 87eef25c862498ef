"""The only code that opens SSH: connections, command values, the executor, uploads, the control client."""
