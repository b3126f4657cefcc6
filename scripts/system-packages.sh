#!/usr/bin/env bash
# What the tests need from the system: Chromium (Playwright drives it; no browser
# download), Node.js (its built-in test runner), Prometheus (it scrapes `/metrics`) and
# Redis (the Redis Streams backend's tests start their own `redis-server`);
# with `bench`, what the benchmarks need: wrk (the load generator of the push benchmark)
# and Prometheus (beside the scrape benchmark). Installs what is
# missing with apt-get, as root or through sudo; anything else is one clear error.
set -euo pipefail

chromium="${OMNIMETRICS_CHROMIUM:-/usr/bin/chromium}"
missing=()
if [ "${1:-}" = "bench" ]; then
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
else
    [ -x "$chromium" ] || missing+=(chromium)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "the tests need ${missing[*]}: install them (or set OMNIMETRICS_CHROMIUM to a Chromium binary)" >&2
    exit 2
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "the tests need ${missing[*]}: run 'apt-get install ${missing[*]}' as root" >&2
        exit 2
    fi
fi
echo "installing ${missing[*]} (apt-get)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
