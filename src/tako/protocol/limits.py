"""Upper bounds on what a deploy may ask of a server: instances, idle timeout, the app's environment.

One place for the CLI (tako.toml, secrets, deploy) and tako-server (control socket), so the CLI refuses
at load exactly what the server would refuse.
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

# One value of an app's environment (a secret, or a variable of tako.toml), in UTF-8 bytes. tako-server
# hands the release `.env` to each instance as its environment, and Linux refuses to start a program
# with any one `NAME=value` string over 128 KiB (MAX_ARG_STRLEN, 32 pages) with "Argument list too
# long". 64 KiB keeps well clear of that and holds any key, token or certificate chain an app reads
# from a variable (a PEM certificate is 1-4 KiB); larger data belongs in a file.
MAX_ENV_VALUE_BYTES = 64 * 1024

# The whole `.env` of a release, in bytes of `NAME=value` strings. Linux also caps arguments plus
# environment together at a quarter of the stack limit: 2 MiB with the usual 8 MiB stack. 1 MiB leaves
# the rest for what tako-server adds (PATH, HOME, PORT, ...) and for a server with a smaller stack limit.
MAX_ENV_BYTES = 1024 * 1024
