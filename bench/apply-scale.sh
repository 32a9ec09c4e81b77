#!/usr/bin/env bash
# Times `openclaw-egress apply` for N literal entries (first load, then a
# one-line change) beside `nft -f` loading the same elements into one set,
# inside a throwaway network namespace. Usage: bench/apply-scale.sh [N] [RUNS]
# Prints one line per run; docs/benchmarks.md records the medians.
set -euo pipefail
N=${1:-10000}
RUNS=${2:-5}
BIN=${BIN:-target/release/openclaw-egress}
NS=oce-bench-$$
DIR=$(mktemp -d)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
ip netns add "$NS"

# N distinct /32 addresses in 198.18.0.0/15 with port 443.
python3 - "$N" "$DIR" <<'PY'
import sys, ipaddress
n, d = int(sys.argv[1]), sys.argv[2]
base = int(ipaddress.ip_address("198.18.0.1"))
addrs = [str(ipaddress.ip_address(base + i)) for i in range(n)]
with open(f"{d}/allowlist.conf", "w") as f:
    f.writelines(f"{a}:443\n" for a in addrs)
with open(f"{d}/floor.nft", "w") as f:
    f.write("table inet bench_floor {\n set s { type ipv4_addr . inet_proto . inet_service; flags interval,timeout;\n elements = {\n")
    f.write(",\n".join(f"{a} . tcp . 443" for a in addrs))
    f.write("\n} }\n}\n")
PY
cat > "$DIR/egressd.toml" <<TOML
allowlist = "allowlist.conf"
[network]
interface = "oc-bench0"
[resolver]
servers = ["127.0.0.1:53"]
[dns]
allow = []
[firewall]
table = "bench_egress"
TOML

fmt() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
ms() { echo $(( $(date +%s%N) / 1000 )); }
for r in $(seq "$RUNS"); do
    ip netns exec "$NS" nft flush ruleset
    t0=$(ms); ip netns exec "$NS" "$BIN" --config "$DIR/egressd.toml" apply >/dev/null; t1=$(ms)
    echo "203.0.113.7:443" >> "$DIR/allowlist.conf"
    t2=$(ms); out=$(ip netns exec "$NS" "$BIN" --config "$DIR/egressd.toml" apply); t3=$(ms)
    sed -i '$d' "$DIR/allowlist.conf"
    ip netns exec "$NS" nft delete table inet bench_egress
    t4=$(ms); ip netns exec "$NS" nft -f "$DIR/floor.nft"; t5=$(ms)
    # The floor for the one-line change: nft adding that one element.
    t6=$(ms); ip netns exec "$NS" nft add element inet bench_floor s '{ 203.0.113.7 . tcp . 443 }'; t7=$(ms)
    ip netns exec "$NS" nft delete table inet bench_floor
    echo "run=$r entries=$N apply_full_ms=$(fmt $((t1-t0))) nft_f_floor_ms=$(fmt $((t5-t4))) apply_one_line_ms=$(fmt $((t3-t2))) nft_add_one_ms=$(fmt $((t7-t6))) :: $out"
done
