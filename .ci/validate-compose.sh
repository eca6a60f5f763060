#!/usr/bin/env bash
# Validate docker-compose.yml (the default services and the gpu profile) without a Docker engine.
#
# Uses the `docker compose` plugin when the machine has one, else Debian's docker-compose
# (1.29, which validates against the compose-spec schema it ships, and needs no engine for
# `config`), installing it on first use. Exits non-zero on an invalid file.
#   usage: .ci/validate-compose.sh [path/to/docker-compose.yml]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
file="$(realpath "${1:-$repo/docker-compose.yml}")"

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    if ! command -v docker-compose >/dev/null 2>&1; then
        echo "validate-compose: installing docker-compose (Debian package)" >&2
        export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    fi
    compose=(docker-compose)
fi
echo "validate-compose: $("${compose[@]}" version --short 2>/dev/null || "${compose[@]}" version | head -n1)" >&2

# The default services, then every profile's; `config -q` prints nothing and fails on errors.
"${compose[@]}" -f "$file" config -q
"${compose[@]}" -f "$file" --profile gpu config -q
echo "validate-compose: $file is valid (default services and --profile gpu)"
