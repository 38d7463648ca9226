#!/usr/bin/env bash
# Install what the browser test (tests/app/test_browser.py) drives: Debian's Chromium, run headless by Playwright.
# Playwright's own browser download (`playwright install`) is not used: the test launches /usr/bin/chromium.
# Run as root (CI runs as root); elsewhere: sudo bash scripts/install_browser.sh
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/install_browser.sh: run as root (sudo bash scripts/install_browser.sh) to apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: the browser and its libraries only (no fonts packs, no desktop integration)
apt-get install -y -qq --no-install-recommends chromium
echo "installed: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
