"""Configuration files: tako.toml, ~/.tako/config.toml and server-config.toml, as frozen models."""
