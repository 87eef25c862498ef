"""The app runtime of tako-server: registry, instances, health, rollout, scaling and app logs."""
