"""Tiny stdlib apps that integration tests deploy to a real tako-server."""
