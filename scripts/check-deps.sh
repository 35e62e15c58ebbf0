#!/usr/bin/env bash
# Enforces the crate dependency rules of DESIGN.md / STYLE.md §1:
#   - strom-protocol and strom-metadata are pure: no tokio, tonic, openraft, mio, socket2
#     anywhere in their normal (non-dev, non-build) dependency tree;
#   - strom-broker and strom-controller never depend on each other;
#   - strom-admin (the admin plane) depends on neither: the binary plugs them into it.
#
# Usage:
#   scripts/check-deps.sh                       # runs `cargo tree` for every rule
#   scripts/check-deps.sh PACKAGE=TREE_FILE ... # checks only these packages, reading each tree
#                                               # from a file (for testing this script)
# A tree file is the output of `cargo tree -e normal -p PACKAGE`, with `--prefix depth`
# (what this script runs) or the default indented prefix.
# Exit status: 0 when every rule holds, 1 when one is broken (each offending path printed),
# 2 on a usage error or when cargo tree itself fails.
set -euo pipefail
export LC_ALL=C.UTF-8

PURE_FORBIDDEN="tokio tonic openraft mio socket2"

forbidden_for() {
    case "$1" in
        strom-protocol | strom-metadata) echo "$PURE_FORBIDDEN" ;;
        strom-broker) echo "strom-controller" ;;
        strom-controller) echo "strom-broker" ;;
        strom-admin) echo "strom-controller strom-broker" ;;
        *) return 1 ;;
    esac
}

# check_tree PACKAGE TREE_FILE: prints the first path from PACKAGE to each forbidden crate;
# returns 1 if there is one.
check_tree() {
    local package="$1" file="$2" forbidden
    forbidden="$(forbidden_for "$package")"
    local -a stack=()
    local -A reported=()
    local line depth name rest prefix found=0
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -z "${line//[[:space:]]/}" ]] && continue
        if [[ "$line" =~ ^([0-9]+)(.*)$ ]]; then
            depth="${BASH_REMATCH[1]}"
            rest="${BASH_REMATCH[2]}"
        else
            # Indented prefix: every level is four characters ("│   ", "├── ", "└── ").
            prefix="${line%%[A-Za-z0-9_]*}"
            depth=$((${#prefix} / 4))
            rest="${line:${#prefix}}"
        fi
        name="${rest%% *}"
        stack[depth]="$name"
        # Forget deeper levels left over from a previous branch.
        stack=("${stack[@]:0:depth+1}")
        if ((depth > 0)) && [[ " $forbidden " == *" $name "* ]] && [[ -z "${reported[$name]:-}" ]]; then
            reported[$name]=1
            local path="${stack[0]}" i
            for ((i = 1; i <= depth; i++)); do path+=" -> ${stack[i]}"; done
            echo "check-deps: $package must not depend on $name: $path" >&2
            found=1
        fi
    done <"$file"
    if ((found)); then return 1; fi
    echo "check-deps: $package ok"
}

status=0
if (($# == 0)); then
    tmp="$(mktemp)"
    trap 'rm -f "$tmp"' EXIT
    cd "$(dirname "$0")/.."
    for package in strom-protocol strom-metadata strom-broker strom-controller strom-admin; do
        if ! cargo tree --quiet -e normal --prefix depth -p "$package" >"$tmp"; then
            echo "check-deps: cargo tree -p $package failed" >&2
            exit 2
        fi
        check_tree "$package" "$tmp" || status=1
    done
else
    for arg in "$@"; do
        package="${arg%%=*}"
        file="${arg#*=}"
        if [[ "$arg" != *=* ]] || ! forbidden_for "$package" >/dev/null || [[ ! -r "$file" ]]; then
            echo "usage: $0 [PACKAGE=TREE_FILE ...]; PACKAGE is one of strom-protocol," \
                "strom-metadata, strom-broker, strom-controller, strom-admin (got '$arg')" >&2
            exit 2
        fi
        check_tree "$package" "$file" || status=1
    done
fi
exit "$status"
