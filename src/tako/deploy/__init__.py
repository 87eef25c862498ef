"""Local side of a deploy: build, version, archive, and the per-server pipeline."""
