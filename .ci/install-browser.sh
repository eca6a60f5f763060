#!/usr/bin/env bash
# Install what tests/test_page.py needs: Debian's Chromium (driven by the playwright Python
# package from the dev extras; `playwright install` is never used, it downloads its own browser).
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
echo "install-browser: installing chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version 2>/dev/null || true
