#!/bin/sh
# Install qpid-proton's example programs for the AMQP 1.0 tests; safe to run again.
#
# The tests start the example broker themselves (tests/amqp10/peers.py) on a
# free loopback port, with the venv's Python, which has python-qpid-proton
# from the amqp10 extra: only the example scripts are needed from Debian.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

BROKER=/usr/share/proton/examples/python/broker.py
if [ -f "$BROKER" ]; then
    echo "qpid-proton's example broker is already installed"
    exit 0
fi

$SUDO apt-get update </dev/null
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    libqpid-proton11-dev-examples </dev/null

echo "installed libqpid-proton11-dev-examples $(dpkg-query -W -f='${Version}' libqpid-proton11-dev-examples)"
