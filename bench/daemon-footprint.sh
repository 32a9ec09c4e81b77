#!/usr/bin/env bash
# Footprint of openclaw-egressd with N hostnames (default 1000) answered by a
# local dnsmasq in a throwaway namespace: RSS once ready, CPU time and
# wake-ups (context switches of all threads) over an idle period (default
# 60 s; TTLs are longer, so nothing is due). Usage: bench/daemon-footprint.sh [N] [SECONDS]
set -euo pipefail
N=${1:-1000}
IDLE=${2:-60}
BIN=${BIN:-target/release}
NS=oce-fp-$$
DIR=$(mktemp -d)
# dnsmasq drops to user nobody before reading its hosts file.
chmod 755 "$DIR"
cleanup() {
    [ -f "$DIR/d.pid" ] && kill "$(cat "$DIR/d.pid")" 2>/dev/null || true
    [ -f "$DIR/dns.pid" ] && kill "$(cat "$DIR/dns.pid")" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
python3 - "$N" "$DIR" <<'PY'
import sys
n, d = int(sys.argv[1]), sys.argv[2]
with open(f"{d}/hosts", "w") as h, open(f"{d}/allowlist.conf", "w") as a:
    for i in range(n):
        h.write(f"198.18.{i // 250}.{i % 250 + 1} h{i:05d}.test\n")
        a.write(f"h{i:05d}.test:443\n")
PY
cat > "$DIR/egressd.toml" <<TOML
allowlist = "allowlist.conf"
[network]
interface = "oc-fp0"
[resolver]
servers = ["127.0.0.1:53"]
concurrency = 64
[dns]
allow = []
[firewall]
table = "fp_egress"
allow_private = ["198.18.0.0/15"]
[control]
socket = "$DIR/control.sock"
TOML
ip netns exec "$NS" dnsmasq --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \
    --local=/test/ --local-ttl=600 --addn-hosts="$DIR/hosts" --pid-file="$DIR/dns.pid"
t0=$(date +%s%N)
ip netns exec "$NS" "$BIN/openclaw-egressd" --config "$DIR/egressd.toml" --log-level warn 2>"$DIR/d.log" &
echo $! >"$DIR/d.pid"
pid=$(cat "$DIR/d.pid")
for _ in $(seq 1200); do
    out=$(ip netns exec "$NS" "$BIN/openclaw-egress" --config "$DIR/egressd.toml" status --json 2>/dev/null || true)
    case $out in *"\"address_count\": $N,"*) break ;; esac
    sleep 0.05
done
t1=$(date +%s%N)
sleep 2
ctx() { cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
cpu() { awk '{print $14 + $15}' /proc/"$pid"/stat; }
rss=$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status)
c0=$(cpu); w0=$(ctx)
sleep "$IDLE"
c1=$(cpu); w1=$(ctx)
hz=$(getconf CLK_TCK)
echo "hosts=$N ready_after_ms=$(( (t1 - t0) / 1000000 )) rss_kib=$rss idle_s=$IDLE cpu_ms=$(( (c1 - c0) * 1000 / hz )) context_switches=$(( w1 - w0 )) threads=$(ls /proc/"$pid"/task | wc -l)"
