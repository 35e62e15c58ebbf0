#!/usr/bin/env bash
# Installs what building and testing strom needs on a fresh Debian bookworm machine (as root):
# kcat for the end-to-end tests, a C toolchain for librdkafka's vendored build (rdkafka-sys runs
# its configure + make; zstd and zlib are built by their -sys crates or found via pkg-config),
# procps for `kill` (the test harness sends signals with it), iproute2 for network tests, and
# rustfmt/clippy for `make lint`. Idempotent: apt is skipped when everything is already there.
set -euo pipefail

# command -> Debian package that provides it
declare -A COMMANDS=(
    [kcat]=kcat
    [cc]=build-essential
    [c++]=build-essential
    [make]=make
    [pkg-config]=pkg-config
    [python3]=python3
    [perl]=perl
    [ip]=iproute2
    [kill]=procps
)
# packages without a command to look for
LIBRARIES=(zlib1g-dev libzstd-dev ca-certificates)

missing=()
for cmd in "${!COMMANDS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${COMMANDS[$cmd]}")
done
for package in "${LIBRARIES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
        missing+=("$package")
done

if ((${#missing[@]} > 0)); then
    # Deduplicate, keep the order stable for the log.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "install-test-deps: installing ${missing[*]}"
    sudo=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "install-test-deps: need root (or sudo) to install ${missing[*]}" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "install-test-deps: system packages present"
fi

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "install-test-deps: adding rustup component $component"
        rustup component add "$component"
    fi
done
