#!/usr/bin/env bash
# Debian packages the tests and the demo use, installed when missing:
#   chromium             the browser test of the demo's search page (headless, via Playwright)
#   prometheus           the monitoring test (started by the test itself, on loopback)
#   fonts-wqy-microhei   Chinese glyphs for screenshots and confusion-matrix pictures
#   docker-compose       validates docker-compose.yml in the tests (docker-compose config)
#   nginx-light          checks the gateway configuration in the tests (nginx -t)
#   docker.io            the Docker daemon of make deploy-up / make test-deploy (vfs storage)
#   debootstrap          builds the Debian base of the stand-in images (deploy/local/)
#   curl                 deploy-up's readiness check through the gateway
set -euo pipefail

wanted=(chromium prometheus fonts-wqy-microhei docker-compose nginx-light docker.io debootstrap curl)
missing=()
for package in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "scripts/system-deps.sh: not a Debian-like system; install ${missing[*]} yourself" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "installing ${missing[*]} (Debian packages) ..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
