#!/usr/bin/env bash
# Create (once) the virtual environment for this checkout and link it as ./.venv.
#
# The environment is shared by every clone on the machine: it lives in
# $GROUPNORM_CACHE/venvs/<hash>, where <hash> covers requirements/lock.txt, the
# Python version and this script, so a change to any of them builds a new one and
# a repeated call (or a fresh CI clone) reuses the existing one without installing.
# The package itself is not installed into the shared venv (a clone's path would
# leak into other clones); the Makefile puts src/ on PYTHONPATH instead.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
cache=${GROUPNORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/groupnorm}
key=$( { cat requirements/lock.txt scripts/setup_env.sh; "$python" -c 'import sys; print(sys.version)'; } \
       | sha256sum | cut -c1-16)
venv="$cache/venvs/$key"

mkdir -p "$cache/venvs"
exec 9>"$venv.lock"
flock 9  # one installer at a time; a second clone waits, then finds the venv complete
if [ ! -f "$venv/.complete" ]; then
  echo "setup: creating the Python environment in $venv (first run only, about 2 minutes)"
  rm -rf "$venv"  # a leftover of an interrupted install: start over
  "$python" -m venv "$venv"
  # Pinned by the lock file; torch/torchvision come from the local wheel cache where there is one.
  # (Local-index warnings about absent directories are noise and filtered out.)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r requirements/dev.txt -c requirements/lock.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  touch "$venv/.complete"
fi
touch "$venv/.last-used"
exec 9>&-
# Environments of older lock files, unused for a week, are removed so the cache does not fill the disk.
find "$cache/venvs" -mindepth 2 -maxdepth 2 -name .last-used -mtime +7 -printf '%h\n' 2>/dev/null \
  | while read -r old; do [ "$old" != "$venv" ] && rm -rf "$old" "$old.lock"; done

# Point ./.venv at the shared environment (replacing a stale link, never a real directory).
if [ -L .venv ] || [ ! -e .venv ]; then
  ln -sfn "$venv" .venv
elif [ ! -x .venv/bin/python ]; then
  echo "setup: ./.venv exists and is not a virtual environment; remove it and run again" >&2
  exit 1
fi
