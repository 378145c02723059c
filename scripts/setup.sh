#!/usr/bin/env bash
# Sets up memring from a fresh clone: Debian's memcached (when missing) and a
# virtualenv in .venv with memring alone, which is all `memring keyloss` and
# `memring chaos` need. With --test it also installs the test extra (pytest,
# hypothesis, and what the tests exercise besides: Django, Flask-Session,
# cryptography and matplotlib).
#
#   scripts/setup.sh          memring, to run its commands
#   scripts/setup.sh --test   memring and everything the tests need
set -euo pipefail

usage="usage: scripts/setup.sh [--test]"
target="."
case "${1-}" in
    "") ;;
    --test) target=".[test]" ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "$usage" >&2; echo "scripts/setup.sh: unknown argument: $1" >&2; exit 2 ;;
esac
if [ "$#" -gt 1 ]; then
    echo "$usage" >&2
    exit 2
fi

cd "$(dirname "$0")/.."

apt_install() {
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! command -v memcached >/dev/null 2>&1; then
    echo "memcached not found: installing Debian's memcached package" >&2
    apt_install memcached
fi

if [ ! -x .venv/bin/python ]; then
    # Debian ships venv's pip bootstrap in a separate package.
    if ! python3 -c "import ensurepip" >/dev/null 2>&1; then
        echo "python3 cannot make a virtualenv: installing Debian's python3-venv package" >&2
        apt_install python3-venv
    fi
    python3 -m venv .venv
fi
# Quiet unless something fails: then show what pip said.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { .venv/bin/python -m pip install -q --upgrade pip \
       && .venv/bin/python -m pip install -q -e "$target"; } >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
