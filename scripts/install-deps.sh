#!/usr/bin/env bash
# Installs the Debian 12 packages Engram builds and runs with, skipping those already present.
# Uses sudo when not root. Called by `make run` and `make test`.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-pthread libopenblas-dev
  nlohmann-json3-dev libsentencepiece-dev libpcre2-dev libssl-dev libstb-dev libpng-dev libjpeg-dev libsqlite3-dev libyaml-cpp-dev
  qt6-base-dev qt6-svg-dev libqcustomplot-dev
  clang libclang-rt-14-dev
  dpkg-dev file desktop-file-utils appstream xvfb xauth
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
