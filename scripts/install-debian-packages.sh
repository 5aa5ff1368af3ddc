#!/usr/bin/env bash
# Debian packages the test suite uses: the browsers the playground's tests drive. chromium is driven by
# Playwright (which cannot download its own browsers here, so it uses the system one at /usr/bin/chromium);
# firefox-esr by tests/firefox.py over WebDriver BiDi.
# Needs root (CI runs as root); elsewhere run it with sudo, or skip it: the browser tests then skip.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-liberation)  # fonts: text in screenshots
[ -x /usr/bin/firefox-esr ] || missing+=(firefox-esr)
if [ ${#missing[@]} -eq 0 ]; then
    echo "==> browsers already installed: $(/usr/bin/chromium --version), $(/usr/bin/firefox-esr --version)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "==> not root: ${missing[*]} not installed (browser tests will skip); run: sudo bash $0" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "==> installed $(/usr/bin/chromium --version), $(/usr/bin/firefox-esr --version)"
