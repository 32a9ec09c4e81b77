#!/usr/bin/env bash
# Installs openclaw-egress from this checkout on Debian/Ubuntu and enforces
# the allowlist. Idempotent; never overwrites an existing config.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it installs packages and loads firewall rules)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "install.sh: needs a Rust toolchain >= 1.85 (https://rustup.rs); Debian's cargo is too old" >&2
    exit 1
fi

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    pkg-config libnftnl-dev libmnl-dev nftables >/dev/null

cargo build --release --locked
install -m 0755 target/release/openclaw-egress /usr/local/bin/openclaw-egress

install -d -m 0755 /etc/openclaw-egress
for f in egressd.toml allowlist.conf; do
    if [ ! -e "/etc/openclaw-egress/$f" ]; then
        install -m 0644 "config/$f" "/etc/openclaw-egress/$f"
    fi
done

openclaw-egress check
# Exit code 3 means some hostname did not resolve: it stays closed, the rest
# is enforced, so the install itself succeeded.
openclaw-egress apply || [ $? -eq 3 ]
echo "openclaw-egress: enforcing /etc/openclaw-egress/allowlist.conf on the bridge of network 'openclaw-egress'"
