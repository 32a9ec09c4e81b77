#!/usr/bin/env bash
# Latency of openclaw-egressd, in a throwaway namespace:
#  - edit: from an allowlist write (a new literal entry appended) to the
#    element being in the kernel (includes the 200 ms reload debounce);
#  - ttl: from a record's TTL running out (dnsmasq TTL 1 s, rewritten to a
#    new address) to the new address being in the kernel.
# Usage: bench/daemon-latency.sh [RUNS]. Prints one line per sample.
set -euo pipefail
RUNS=${1:-10}
BIN=${BIN:-target/release}
NS=oce-lat-$$
DIR=$(mktemp -d)
chmod 755 "$DIR" # dnsmasq reads its hosts file as user nobody
cleanup() {
    [ -f "$DIR/d.pid" ] && kill "$(cat "$DIR/d.pid")" 2>/dev/null || true
    [ -f "$DIR/dns.pid" ] && kill "$(cat "$DIR/dns.pid")" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
echo "198.18.7.1 rot.test" >"$DIR/hosts"
printf 'rot.test:443\n' >"$DIR/allowlist.conf"
cat >"$DIR/egressd.toml" <<TOML
allowlist = "allowlist.conf"
[network]
interface = "oc-lat0"
[resolver]
servers = ["127.0.0.1:53"]
min_ttl = "1s"
[dns]
allow = []
[firewall]
table = "lat_egress"
allow_private = ["198.18.0.0/15"]
[control]
socket = "$DIR/control.sock"
TOML
ip netns exec "$NS" dnsmasq --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \
    --local=/test/ --local-ttl=1 --addn-hosts="$DIR/hosts" --pid-file="$DIR/dns.pid"
ip netns exec "$NS" "$BIN/openclaw-egressd" --config "$DIR/egressd.toml" --log-level warn 2>"$DIR/d.log" &
echo $! >"$DIR/d.pid"
now() { date +%s%N; }
has() { ip netns exec "$NS" nft list set inet lat_egress allow_v4 2>/dev/null | grep -q "$1"; }
wait_for() {
    local t0=$1 what=$2
    for _ in $(seq 2000); do
        if has "$what"; then echo $(( ($(now) - t0) / 1000000 )); return; fi
        sleep 0.002
    done
    echo timeout
}
until has "198.18.7.1 "; do sleep 0.05; done
for i in $(seq "$RUNS"); do
    t0=$(now)
    echo "198.18.8.$i:443" >>"$DIR/allowlist.conf"
    echo "sample=$i edit_to_kernel_ms=$(wait_for "$t0" "198.18.8.$i ")"
done
for i in $(seq 2 $((RUNS + 1))); do
    echo "198.18.7.$i rot.test" >"$DIR/hosts"
    kill -HUP "$(cat "$DIR/dns.pid")"
    # The daemon asks again when the 1 s TTL of its last answer runs out;
    # time from the change to the kernel, minus nothing: an upper bound of
    # (TTL left + query + apply).
    t0=$(now)
    echo "sample=$i change_to_kernel_ms=$(wait_for "$t0" "198.18.7.$i ") (TTL 1 s)"
done
