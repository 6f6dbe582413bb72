#!/bin/sh
# Install Go and nats.go from Debian for the Go peer of the NATS interop
# tests; safe to run again.
#
# The tests build their own small Loom peer (tests/interop_nats/gopeer) in a
# temporary directory with GOPATH pointing at Debian's /usr/share/gocode, so
# nothing is fetched from outside and nothing is built into the work tree.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

NATS_GO=/usr/share/gocode/src/github.com/nats-io/nats.go
if command -v go >/dev/null 2>&1 && [ -f "$NATS_GO/nats.go" ]; then
    echo "go and nats.go are already installed"
    exit 0
fi

$SUDO apt-get update </dev/null
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    golang-go golang-github-nats-io-go-nats-dev </dev/null

echo "installed golang-go $(dpkg-query -W -f='${Version}' golang-go)," \
    "nats.go $(dpkg-query -W -f='${Version}' golang-github-nats-io-go-nats-dev)"
