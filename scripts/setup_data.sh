#!/usr/bin/env bash
# Make Fashion-MNIST available (once): Debian's package where apt can install it, else a
# checked download into the cache directory (python -m groupnorm.data.fashion_mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=.venv/bin/python

if "$py" -c 'from groupnorm.data import find_fashion_mnist; find_fashion_mnist()' 2>/dev/null; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "setup: installing Debian's dataset-fashion-mnist"
  if { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist; } \
      >/tmp/groupnorm-apt.log 2>&1; then
    exit 0
  fi
  echo "setup: apt-get could not install it (see /tmp/groupnorm-apt.log); downloading instead"
fi
"$py" -m groupnorm.data.fashion_mnist
