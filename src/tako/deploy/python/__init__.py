"""Python dependencies of an app: found in the project, built into a wheelhouse for each server's Python
on the developer's machine, shipped inside the release, installed offline into a venv on the server.

A deploy plugs this in at three points, and uses nothing else from the package:

(a) Local preparation, before the archive is built: `detect_requirements(project_dir)` (None: no
    dependencies, nothing else to do); `probe_targets(addresses, known_hosts, app_dir)` asks each server
    for its Python and the app's complete venvs (a server whose probe failed is a failed server);
    `build_wheelhouses(reqs, {server: target}, output, {server: venv keys})` returns `PythonDeps`, whose
    `extra_dirs` the release archive must carry (archive path -> local directory).
(b) On each server, after the release is extracted and before it is promoted: `install_step(deps)` is an
    async callable `(executor, staged release dir, reporter)`. It reports under the step named `STEP`
    ("python") and raises DeployError when the install fails, so the failure is reported at that step.
(c) After old releases are pruned, still under the deploy lock: run `prune_commands(app_dir)`, best
    effort (they remove venvs no kept release links to).

Inside: `target` (the probe), `requirements`, `reqfile` and `uv_lock` (what the project needs), `pip` and
`wheelhouse` (the local build), `local` (one wheelhouse per server Python), `remote` (the server's
commands and the install step), `layout` (the names both halves agree on).
"""

from tako.deploy.python.local import PythonDeps, build_wheelhouses
from tako.deploy.python.remote import STEP, ServerPython, install_step, probe_targets, prune_commands
from tako.deploy.python.requirements import Requirements, detect_requirements

__all__ = [
    "STEP",
    "PythonDeps",
    "Requirements",
    "ServerPython",
    "build_wheelhouses",
    "detect_requirements",
    "install_step",
    "probe_targets",
    "prune_commands",
]
