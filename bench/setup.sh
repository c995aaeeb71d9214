#!/usr/bin/env bash
# Install the peer proxies the benchmark compares against. Idempotent: safe to run again.
#   microsocks, dante-server      from Debian (apt)
#   asyncio-socks-server, pproxy  from PyPI into the project's venv (plus py-spy for profiling)
#   valgrind                      for bench/instructions.py (callgrind instruction counts)
#   bench/.build/cyclegen         the C load generator for cycles and ping-pong (gcc)
#   bench/.build/floorrelay       a bare C splice relay, the floor bench/alternate.py measures
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${VENV:-$root/.venv}"

need_apt=()
command -v microsocks >/dev/null 2>&1 || need_apt+=(microsocks)
command -v danted >/dev/null 2>&1 || need_apt+=(dante-server)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
if ((${#need_apt[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    # The Debian package starts danted as a system service; the bench runs its own copy.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet danted 2>/dev/null; then
        systemctl stop danted || true
        systemctl disable danted || true
    fi
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    asyncio-socks-server pproxy py-spy uvloop rich
# Same command as bench/cyclegen.py; rebuilt only when the source is newer than the binary.
# cyclegen is the load generator; floorrelay the C relay bench/alternate.py measures against.
mkdir -p "$here/.build"
printf '*\n' >"$here/.build/.gitignore"
for prog in cyclegen floorrelay; do
    if [[ ! -x "$here/.build/$prog" || "$here/$prog.c" -nt "$here/.build/$prog" ]]; then
        gcc -O2 -Wall -Wextra -Werror -o "$here/.build/$prog" "$here/$prog.c"
    fi
done
echo "load generator: $here/.build/cyclegen"

echo "bench peers installed:"
command -v microsocks danted
"$venv/bin/pip" show asyncio-socks-server pproxy 2>/dev/null | grep -E '^(Name|Version)'
