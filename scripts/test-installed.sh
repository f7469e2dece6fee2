#!/usr/bin/env bash
# The installed-package check (`make test-installed`, run by `make test`): builds the .deb, installs
# it with apt-get, and runs Engram from outside the source tree as a user would, then removes it.
# An installed binary that reached for a source-tree or build-tree file fails here.
set -euo pipefail
BUILD="${1:-build}"
src="$(cd "$(dirname "$0")/.." && pwd)"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

(cd "$BUILD" && cpack -G DEB >/dev/null)
deb="$(ls -t "$BUILD"/engram_*_amd64.deb | head -n 1)"
echo "test-installed: $deb"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q --no-install-recommends "$(realpath "$deb")" >/dev/null
cleanup() { $sudo apt-get remove -y -q engram >/dev/null || true; }
trap cleanup EXIT

work="$(mktemp -d)"
cd "$work"
# The installed programs must not know where the sources or the build are.
export ENGRAM_CACHE_DIR="$work/cache"
unset ENGRAM_RESOURCES ENGRAM_SPM_MODULE
check() { echo "test-installed: $*"; }

check "engram-cli --version"; /usr/bin/engram-cli --version
check "engram-cli tour"; /usr/bin/engram-cli tour > tour.log
grep -q "Fact World" tour.log
check "engram-cli edit on the installed demo model"
/usr/bin/engram-cli edit --method rome --prompt "{} competes in" --subject "Peanaim Fosha" --target Zuluball --db p.engram > edit.log
grep -q "recorded edit 1" edit.log
/usr/bin/engram-cli history --db p.engram --verify > history.log
check "man pages and completion"
test -s /usr/share/man/man1/engram-cli.1.gz && test -s /usr/share/man/man1/engram.1.gz
test -s /usr/share/bash-completion/completions/engram-cli
check "validators"
desktop-file-validate /usr/share/applications/org.engramworkbench.Engram.desktop
appstreamcli validate --no-net /usr/share/metainfo/org.engramworkbench.Engram.metainfo.xml
check "engram --screenshot under xvfb-run"
xvfb-run -a /usr/bin/engram --screenshot shots > gui.log 2>&1 || { cat gui.log; exit 1; }
ls shots/*.png > /dev/null
# Nothing the programs opened lies in the source tree.
if grep -rl "$src" tour.log edit.log history.log gui.log; then echo "test-installed: output names the source tree"; exit 1; fi
cd /
rm -rf "$work"
echo "test-installed: passed"
