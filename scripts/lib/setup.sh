# Shared setup for scripts/test and scripts/demo: Debian packages and the project's .venv.
# Safe to run repeatedly: it installs only what is missing.

# command -> Debian package
TAKO_PACKAGES=(
  "sshd:openssh-server"
  "ssh:openssh-client"
  "nc:netcat-openbsd"
  "curl:curl"
  "ip:iproute2"
  "nsenter:util-linux"
  "setpriv:util-linux"
  "pebble:pebble"
  "pebble-challtestsrv:pebble"
  "git:git"
  "setcap:libcap2-bin"
  "prometheus:prometheus"  # the e2e test of /metrics scrapes with a real Prometheus
  "h2load:nghttp2-client"  # a real HTTP/2 client in the HTTP/2 tests and bench/http2
  "ccache:ccache"  # the proxy's C, compiled once for its three builds in a test run (use_compiler_cache)
)

ensure_packages() {
  local missing=() entry cmd pkg
  for entry in "${TAKO_PACKAGES[@]}"; do
    cmd=${entry%%:*}
    pkg=${entry#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
      missing+=("$pkg")
    fi
  done
  if [ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
  fi
  # A C compiler, the C library's headers and Python's: the proxy's per-request modules are compiled.
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  [ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
  if ! /usr/bin/python3 -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
    missing+=(python3-dev)
  fi
  # libnghttp2's header: HTTP/2 on the HTTPS listener is a compiled binding to it (the library itself,
  # libnghttp2-14, is on every Debian system).
  [ -f /usr/include/nghttp2/nghttp2.h ] || missing+=(libnghttp2-dev)
  # libssl's headers: the TLS transport's record I/O is a compiled binding to the libssl Python's ssl uses.
  [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "error: missing packages ${missing[*]}; run this script as root or install them first" >&2
      return 1
    fi
    echo "==> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
  fi
}

ensure_venv() {
  # The venv is built from the system Python so that the tako user can read it.
  local stamp=.venv/.tako-installed want
  want=$(cat pyproject.toml sdk/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    /usr/bin/python3 -m venv .venv
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing tako and test dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev]'
    if [ -f sdk/pyproject.toml ]; then .venv/bin/pip install -q -e sdk; fi
    echo "$want" >"$stamp"
  fi
  use_compiler_cache
  build_compiled_proxy
}

use_compiler_cache() {
  # A test run compiles the same C three times: in place (build_compiled_proxy), in the testbed's tako
  # wheel, and in the wheel `tako servers upgrade` builds (tests/e2e/test_server_upgrade.py). ccache's
  # directory of compiler names, first on the PATH of everything these scripts start, compiles it once:
  # the later builds run the same steps and get the same objects from the cache.
  if [ -d /usr/lib/ccache ]; then
    export PATH="/usr/lib/ccache:$PATH"
    export CCACHE_DIR="${CCACHE_DIR:-/var/tmp/tako-ccache}"
  fi
}

build_compiled_proxy() {
  # Compile the proxy's per-request modules in place (only what changed since the last build; see
  # src/tako/server/proxy/compiled.py). Without a compiler they stay pure Python: slower, same behaviour.
  if ! .venv/bin/python setup.py -q build_ext --inplace >.venv/build-proxy.log 2>&1; then
    echo "warning: compiling the proxy modules failed (see .venv/build-proxy.log); they run as Python" >&2
  fi
}
