#!/usr/bin/env bash
# Installs what building and testing strom needs on a fresh Debian bookworm machine (as root):
# kcat for the end-to-end tests, a C toolchain for librdkafka's vendored build (rdkafka-sys runs
# its configure + make; zstd and zlib are built by their -sys crates or found via pkg-config),
# procps for `kill` (the test harness sends signals with it), iproute2 for network tests,
# rustfmt/clippy for `make lint`, and the clients of tests/clients/: kafka-python, aiokafka and
# confluent-kafka (its wheel carries its own librdkafka) in a venv and kafkajs in a node prefix,
# both under target/test-deps (STROM_TEST_DEPS_DIR), where tests/src/clients.rs looks for them;
# Go with Debian's sarama and kafka-go sources, from which the Go clients of tests/clients/go/
# are built offline (GOPATH mode against /usr/share/gocode, no module downloads) into
# target/test-deps/go/bin. Idempotent and quick when everything is already there: apt, pip, npm
# and go build are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned client versions (each library's current release): a change here reinstalls on the next
# run.
KAFKA_PYTHON_VERSION=3.0.12
AIOKAFKA_VERSION=0.14.0
CONFLUENT_KAFKA_VERSION=2.16.1
KAFKAJS_VERSION=2.2.4
DEPS_DIR=${STROM_TEST_DEPS_DIR:-$PWD/target/test-deps}

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
    [node]=nodejs
    [npm]=npm
    [go]=golang-go
)
# packages without a command to look for (the Go client libraries are sources under
# /usr/share/gocode)
LIBRARIES=(zlib1g-dev libzstd-dev ca-certificates golang-github-shopify-sarama-dev
    golang-github-segmentio-kafka-go-dev)

missing=()
for cmd in "${!COMMANDS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${COMMANDS[$cmd]}")
done
for package in "${LIBRARIES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
        missing+=("$package")
done
# `python3 -m venv` needs ensurepip, which Debian ships apart from python3.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

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

# kafka-python and aiokafka in a venv (Debian's python3 refuses system-wide pip installs,
# PEP 668).
venv=$DEPS_DIR/venv
python_wanted="kafka-python==$KAFKA_PYTHON_VERSION aiokafka==$AIOKAFKA_VERSION confluent-kafka==$CONFLUENT_KAFKA_VERSION"
if "$venv/bin/python" -c "
import sys, kafka, aiokafka, confluent_kafka
sys.exit((kafka.__version__, aiokafka.__version__, confluent_kafka.version()[0])
         != ('$KAFKA_PYTHON_VERSION', '$AIOKAFKA_VERSION', '$CONFLUENT_KAFKA_VERSION'))
" >/dev/null 2>&1; then
    echo "install-test-deps: $python_wanted present in $venv"
else
    echo "install-test-deps: installing $python_wanted into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086 # two requirement specifiers
    "$venv/bin/pip" install --quiet --disable-pip-version-check $python_wanted
fi

# kafkajs in a node prefix; the tests run node with NODE_PATH=$DEPS_DIR/node/node_modules.
prefix=$DEPS_DIR/node
installed=$(node -p "require('$prefix/node_modules/kafkajs/package.json').version" 2>/dev/null ||
    true)
if [[ $installed == "$KAFKAJS_VERSION" ]]; then
    echo "install-test-deps: kafkajs $KAFKAJS_VERSION present in $prefix"
else
    echo "install-test-deps: installing kafkajs $KAFKAJS_VERSION into $prefix"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
        "kafkajs@$KAFKAJS_VERSION"
fi

# The Go clients: each directory of tests/clients/go/ but common/ is one program, built against
# Debian's packaged sources in GOPATH mode (GO111MODULE=off, GOPROXY=off: nothing downloaded).
# A build is redone when the sources or the Debian package versions change (a stamp holds
# their checksum) or a source is newer than its binary.
go_dir=$DEPS_DIR/go
go_sources=tests/clients/go
go_stamp=$(
    {
        find "$go_sources" -name '*.go' -type f -print0 | sort -z | xargs -0 sha256sum
        dpkg-query -W -f='${Package} ${Version}\n' golang-go golang-github-shopify-sarama-dev \
            golang-github-segmentio-kafka-go-dev
    } | sha256sum | cut -d' ' -f1
)
# The tests refuse a binary older than its sources (a checkout may touch them unchanged): those
# are rebuilt too, from the build cache.
go_current() {
    [[ -f $go_dir/stamp && $(cat "$go_dir/stamp") == "$go_stamp" ]] || return 1
    for program in "$go_sources"/*/; do
        name=$(basename "$program")
        [[ $name == common ]] && continue
        [[ -x $go_dir/bin/$name-client ]] || return 1
        [[ -z $(find "$program" "$go_sources/common" -newer "$go_dir/bin/$name-client") ]] ||
            return 1
    done
}
if go_current; then
    echo "install-test-deps: Go clients present in $go_dir/bin"
else
    echo "install-test-deps: building the Go clients into $go_dir/bin"
    mkdir -p "$go_dir/bin" "$go_dir/cache"
    for program in "$go_sources"/*/; do
        name=$(basename "$program")
        [[ $name == common ]] && continue
        (
            cd "$program"
            # DataDog/zstd calls a libzstd function that zstd.h marks deprecated: not ours.
            GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off GOFLAGS= \
                GOCACHE="$go_dir/cache" CGO_CFLAGS="-O2 -Wno-deprecated-declarations" \
                go build -o "$go_dir/bin/$name-client.new" .
        )
        mv "$go_dir/bin/$name-client.new" "$go_dir/bin/$name-client"
    done
    echo "$go_stamp" >"$go_dir/stamp"
fi
