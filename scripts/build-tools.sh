#!/usr/bin/env bash
# Builds the checkers the project's tests run on its own examples, from the Go
# module proxy, into
#     /var/cache/rto-harness/tools/<tool>-<version>/<tool>
# Now: actionlint (github.com/rhysd/actionlint/cmd/actionlint), which
# tests/test_deploy_examples.py runs on deploy/ci/nightly-kind.yml.
#
# Idempotent and cached: a tool is built only when its versioned binary is
# missing or does not answer -version; a second run only checks. Nothing is
# downloaded but Go modules.
#
# Usage: scripts/build-tools.sh [--check]
#   --check   only check; exit 1 if a tool is missing.
# Environment: ACTIONLINT_VERSION (default v1.7.12), RTO_TOOLS_CACHE (default
#   /var/cache/rto-harness/tools), GO (default go, else /usr/local/go/bin/go).
set -euo pipefail

ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}
CACHE=${RTO_TOOLS_CACHE:-/var/cache/rto-harness/tools}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# The go command puts its module and build caches under $HOME.
export HOME=${HOME:-/root}
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

log() { echo "$(date +%H:%M:%S) build-tools: $*"; }

build() {  # build NAME VERSION PACKAGE
    local name=$1 version=$2 pkg=$3
    local dir="$CACHE/$name-$version"
    if [ -x "$dir/$name" ] && "$dir/$name" -version >/dev/null 2>&1; then
        ln -sfn "$name-$version/$name" "$CACHE/$name"
        log "$name $version present ($dir/$name)"
        return 0
    fi
    if [ "$CHECK" = 1 ]; then
        log "$name $version missing ($dir/$name)" >&2
        return 1
    fi
    log "building $name ($pkg@$version) ..."
    local t0=$SECONDS tmp
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/.$name.XXXXXX")
    # -trimpath: the binary does not depend on where the module cache is.
    if ! CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-trimpath "$GO" install "$pkg@$version"; then
        rm -rf "$tmp"
        log "building $name failed" >&2
        return 1
    fi
    chmod 755 "$tmp"  # mktemp makes it 0700: the tool is for every user
    rm -rf "$dir"
    mv "$tmp" "$dir"  # one rename: a half-built tool is never in place
    # The unversioned link is what tests look for first.
    ln -sfn "$name-$version/$name" "$CACHE/$name"
    log "built $name in $((SECONDS - t0))s"
}

build actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint
