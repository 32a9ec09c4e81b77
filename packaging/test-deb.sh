#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg on THIS machine, checks
# that everything landed and works, purges it, and checks that it left
# nothing behind. Meant for CI (a throwaway machine, as root); it refuses to
# run where an openclaw-egress installation already exists, and it purges
# the package on every exit, failures included.
#
#   packaging/test-deb.sh            build (packaging/build-deb.sh), then test
#   packaging/test-deb.sh PKG.deb    test an existing package
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

PKG=openclaw-egress
fail() {
    echo "test-deb.sh: FAIL: $*" >&2
    exit 1
}
step() { echo "test-deb.sh: $*"; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs the package with dpkg)"

# Never touch an installation that is not ours: dpkg -P would delete an
# operator's /etc/openclaw-egress.
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -qv 'not-installed'; then
    fail "$PKG is already known to dpkg ($(dpkg-query -W -f='${Status}' "$PKG")); refusing to touch it"
fi
for p in /etc/openclaw-egress /usr/bin/openclaw-egress /usr/bin/openclaw-egressd \
    /usr/lib/systemd/system/openclaw-egressd.service /lib/systemd/system/openclaw-egressd.service \
    /etc/systemd/system/openclaw-egressd.service; do
    [ ! -e "$p" ] && [ ! -L "$p" ] || fail "$p exists; refusing to install over it"
done

if [ $# -ge 1 ]; then
    deb=$1
else
    step "building the package"
    deb=$(packaging/build-deb.sh | tail -n 1)
fi
[ -f "$deb" ] || fail "no package at $deb"
step "package: $deb"

work=$(mktemp -d /tmp/test-deb.XXXXXX)
# What dpkg and the systemd helpers own outside the package's files, to
# compare after the purge.
state_snapshot() {
    {
        # Some of these folders may not exist: find's status does not matter.
        { find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled \
            /var/lib/systemd/deb-systemd-helper-masked -xdev 2>/dev/null || true; } | sort
        dpkg --audit 2>&1 || true
    }
}
state_snapshot >"$work/before"

cleanup() {
    local rc=$?
    if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -qv 'not-installed'; then
        echo "test-deb.sh: cleaning up: dpkg -P $PKG" >&2
        dpkg -P "$PKG" >&2 || dpkg -P --force-remove-reinstreq "$PKG" >&2 || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every regular file and symlink the package holds, as absolute paths.
dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { p = $6; sub(/^\./, "", p); print p }' | sort >"$work/files"
expected=(
    /usr/bin/openclaw-egress
    /usr/bin/openclaw-egressd
    /usr/lib/systemd/system/openclaw-egressd.service
    /etc/openclaw-egress/egressd.toml
    /etc/openclaw-egress/allowlist.conf
    /usr/share/man/man1/openclaw-egress.1.gz
    /usr/share/man/man8/openclaw-egressd.8.gz
    /usr/share/bash-completion/completions/openclaw-egress
    /usr/share/zsh/vendor-completions/_openclaw-egress
    /usr/share/fish/vendor_completions.d/openclaw-egress.fish
    /usr/share/doc/openclaw-egress/copyright
)
# One page per subcommand, named by the CLI itself.
for sub in check plan apply show flush allow remove status setup-network verify; do
    expected+=("/usr/share/man/man1/openclaw-egress-$sub.1.gz")
done
for f in "${expected[@]}"; do
    grep -qxF "$f" "$work/files" || fail "the package lacks $f (dpkg-deb -c)"
done

step "dpkg -i"
dpkg -i "$deb"

status=$(dpkg-query -W -f='${Status}' "$PKG")
[ "$status" = "install ok installed" ] || fail "dpkg status after install: $status"
while read -r f; do
    [ -e "$f" ] || [ -L "$f" ] || fail "$f is in the package but not on disk"
done <"$work/files"
step "all $(wc -l <"$work/files") files landed"

conffiles=$(dpkg-query -W -f='${Conffiles}' "$PKG")
for f in /etc/openclaw-egress/egressd.toml /etc/openclaw-egress/allowlist.conf; do
    grep -q "^ $f " <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
[ -x /usr/bin/openclaw-egress ] && [ -x /usr/bin/openclaw-egressd ] || fail "binaries not executable"

version=$(dpkg-query -W -f='${Version}' "$PKG")
version=${version%-*}
out=$(/usr/bin/openclaw-egress --version) || fail "openclaw-egress --version failed"
[ "$out" = "openclaw-egress $version" ] || fail "openclaw-egress --version says '$out', want 'openclaw-egress $version'"
out=$(/usr/bin/openclaw-egressd --version) || fail "openclaw-egressd --version failed"
[ "$out" = "openclaw-egressd $version" ] || fail "openclaw-egressd --version says '$out'"
step "--version: $out"

# The shipped config and allowlist are valid as installed.
/usr/bin/openclaw-egress check || fail "openclaw-egress check rejects the installed config"

# Man pages: valid groff when groff is there (any warning fails), else at
# least non-empty.
for page in $(grep '^/usr/share/man/' "$work/files"); do
    zcat "$page" >"$work/page" || fail "$page is not gzip"
    [ -s "$work/page" ] || fail "$page is empty"
    if command -v groff >/dev/null; then
        groff -man -Tutf8 -z -ww "$work/page" 2>"$work/groff.err" || fail "groff fails on $page: $(cat "$work/groff.err")"
        [ ! -s "$work/groff.err" ] || fail "groff warns on $page: $(cat "$work/groff.err")"
        groff -man -Tascii -P-cbou "$work/page" 2>/dev/null | grep -q '^NAME' || fail "$page renders without a NAME section"
    fi
done
command -v groff >/dev/null && step "man pages: valid groff" || step "man pages: non-empty (groff not installed)"

# Completions parse in their shells (each shell only if installed; bash is).
bash -n /usr/share/bash-completion/completions/openclaw-egress || fail "bash completion does not parse"
bash -c 'source /usr/share/bash-completion/completions/openclaw-egress && complete -p openclaw-egress' >/dev/null ||
    fail "the bash completion does not register for openclaw-egress"
if command -v zsh >/dev/null; then zsh -n /usr/share/zsh/vendor-completions/_openclaw-egress || fail "zsh completion"; fi
if command -v fish >/dev/null; then fish -n /usr/share/fish/vendor_completions.d/openclaw-egress.fish || fail "fish completion"; fi

# The unit as installed: its binaries exist now, so systemd can verify it.
unit=/usr/lib/systemd/system/openclaw-egressd.service
cmp -s "$unit" systemd/openclaw-egressd.service || fail "the installed unit differs from systemd/openclaw-egressd.service"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
    score=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.5) }' || fail "exposure '$score' > 2.5"
    step "unit: verified, exposure $score"
fi
if [ -x /usr/bin/deb-systemd-helper ]; then
    [ -L /etc/systemd/system/multi-user.target.wants/openclaw-egressd.service ] ||
        fail "the unit was not enabled (no multi-user.target.wants link)"
fi
# Without systemd as PID 1 the maintainer scripts must not start anything.
if [ ! -d /run/systemd/system ]; then
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/openclaw-egressd ]; then
            fail "the package started the daemon (pid ${p#/proc/}) on a machine without systemd"
        fi
    done
fi

step "dpkg -P"
dpkg -P "$PKG"
status=$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null || true)
[ -z "$status" ] || [ "$status" = "unknown ok not-installed" ] || fail "dpkg status after purge: $status"
while read -r f; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f is still there after the purge"
done <"$work/files"
[ ! -e /etc/openclaw-egress ] || fail "/etc/openclaw-egress is still there after the purge"
state_snapshot >"$work/after"
diff -u "$work/before" "$work/after" >&2 || fail "the purge left systemd or dpkg state behind (diff above)"
step "OK: installed, checked, purged without leftovers"
