"""Upper bounds on what a deploy may ask of one server, shared by tako.toml validation and tako-server.

One place, so the CLI refuses at load exactly what the server would refuse on the control socket.
"""

from __future__ import annotations

# Instances of one app on one server. Each instance is a process of its own (a Python app's worker is
# typically 50-100 MB), so 64 already asks for several GB and far more processes than a server has
# cores; past that, a number is a typo, not a plan. A review's `instances = 1000000` spawned about 660
# processes before the server had to be killed.
MAX_INSTANCES = 64

# Seconds an idle instance above the minimum is kept (idle_timeout). One week: longer is "never stop",
# which `instances` says directly; the bound also keeps the value well inside SQLite's 64-bit integers
# (the control socket's JSON carries integers of any size).
MAX_IDLE_TIMEOUT = 7 * 24 * 3600
