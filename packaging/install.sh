#!/usr/bin/env bash
# Installs openclaw-egress from this checkout on Debian/Ubuntu and starts the
# daemon: as the systemd service openclaw-egressd when systemd runs the
# machine, otherwise in the background (log: /var/log/openclaw-egressd.log).
# Idempotent; never overwrites an existing config.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it installs packages and loads firewall rules)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "install.sh: needs a Rust toolchain >= 1.88 (https://rustup.rs); Debian's cargo is too old" >&2
    exit 1
fi

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    pkg-config libnftnl-dev libmnl-dev nftables >/dev/null

cargo build --release --locked -p openclaw-egress -p openclaw-egressd
install -m 0755 target/release/openclaw-egress /usr/local/bin/openclaw-egress
install -m 0755 target/release/openclaw-egressd /usr/local/bin/openclaw-egressd

install -d -m 0755 /etc/openclaw-egress
for f in egressd.toml allowlist.conf; do
    if [ ! -e "/etc/openclaw-egress/$f" ]; then
        install -m 0644 "config/$f" "/etc/openclaw-egress/$f"
    fi
done

openclaw-egress check

if [ -d /run/systemd/system ]; then
    sed 's|/usr/bin/openclaw-egress|/usr/local/bin/openclaw-egress|g' \
        systemd/openclaw-egressd.service >/etc/systemd/system/openclaw-egressd.service
    systemctl daemon-reload
    systemctl enable openclaw-egressd.service
    systemctl restart openclaw-egressd.service
    systemctl --no-pager --lines=0 status openclaw-egressd.service
else
    # No systemd (a container or a minimal VM): run it in the background.
    if [ -f /run/openclaw-egressd.pid ] && kill -0 "$(cat /run/openclaw-egressd.pid)" 2>/dev/null; then
        kill "$(cat /run/openclaw-egressd.pid)"
        sleep 1
    fi
    nohup /usr/local/bin/openclaw-egressd --config /etc/openclaw-egress/egressd.toml \
        >>/var/log/openclaw-egressd.log 2>&1 &
    echo $! >/run/openclaw-egressd.pid
    # Ready once the control socket answers (resolution may take a few seconds).
    for _ in $(seq 50); do
        openclaw-egress status >/dev/null 2>&1 && break
        sleep 0.2
    done
    openclaw-egress status | head -5 || true
    echo "openclaw-egressd running as pid $(cat /run/openclaw-egressd.pid) (log: /var/log/openclaw-egressd.log)"
fi
