#!/bin/sh
# Install rabbitmq-server for the test suite; safe to run again.
#
# The tests start a private node of their own (tests/rabbitmq.py) on free
# ports with its own epmd, so the Debian package's service is not needed: keep
# it from starting during the install, and stop and disable it if it started
# anyway. A broker that was installed before this script ran is left alone;
# our node does not collide with it.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

# openssl makes the test broker's TLS certificates; without it the TLS tests skip.
packages=rabbitmq-server
command -v openssl >/dev/null 2>&1 || packages="$packages openssl"

if command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    if [ "$packages" = rabbitmq-server ]; then
        echo "rabbitmq-server and openssl are already installed"
        exit 0
    fi
    packages=openssl
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
    $packages </dev/null

# systemd ignores policy-rc.d for enabling; stop and disable the unit there.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
fi

echo "installed rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server)"
