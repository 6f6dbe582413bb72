#!/bin/sh
# Install nats-server for the test suite; safe to run again.
#
# The tests start private servers of their own (tests/natsserver.py) on free
# loopback ports, so the Debian package's service is not needed: keep it from
# starting during the install, and stop and disable it if it started anyway.
# A server that was installed before this script ran is left alone; ours do
# not collide with it.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

if command -v nats-server >/dev/null 2>&1; then
    echo "nats-server is already installed"
    exit 0
fi

# policy-rc.d exiting 101 tells invoke-rc.d not to start services.
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    added_policy=1
fi
trap 'if [ -n "$added_policy" ]; then $SUDO rm -f "$policy"; fi' EXIT

$SUDO apt-get update </dev/null
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    nats-server </dev/null

# systemd ignores policy-rc.d for enabling; stop and disable the unit there.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now nats-server >/dev/null 2>&1 || true
fi

echo "installed nats-server $(dpkg-query -W -f='${Version}' nats-server)"
