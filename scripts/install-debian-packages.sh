#!/usr/bin/env bash
# Debian packages the test suite uses: chromium, the browser the playground's tests drive (Playwright
# cannot download its own browsers here, so they use the system one at /usr/bin/chromium).
# Needs root (CI runs as root); elsewhere run it with sudo, or skip it: the browser tests then skip.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "==> chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "==> not root: chromium not installed (browser tests will skip); run: sudo bash $0" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# fonts-liberation: text in screenshots (a recommendation of chromium, skipped with the rest)
apt-get install -y -q --no-install-recommends chromium fonts-liberation
echo "==> installed $(/usr/bin/chromium --version)"
