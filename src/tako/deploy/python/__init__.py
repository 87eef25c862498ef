"""Helpers of tako.deploy.python_deps (lock-file readers)."""
