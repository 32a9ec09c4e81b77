#!/usr/bin/env bash
# Builds the Debian package openclaw-egress: both release binaries, the man
# pages and shell completions generated from the clap definitions
# (packaging/gen), then `cargo deb` (metadata: crates/cli/Cargo.toml).
# Prints the path of the .deb on its last line of stdout.
#
# Needs cargo-deb (`cargo install cargo-deb --locked`) and the build
# dependencies (pkg-config libnftnl-dev libmnl-dev). Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb.sh: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
    exit 1
fi

# cargo-deb maps its `target/release/` asset paths to the real target folder;
# the generator must write where that mapping points.
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
    echo "build-deb.sh: cannot find the target folder in 'cargo metadata'" >&2
    exit 1
fi
assets="$target_dir/release/assets"

cargo build --release --locked -p openclaw-egress -p openclaw-egressd -p openclaw-egress-gen >&2
rm -rf "$assets"
"$target_dir/release/openclaw-egress-gen" "$assets" >&2
# Debian policy wants man pages gzipped; cargo-deb compresses only the man
# pages it does not consider build products, and these are.
gzip -9n "$assets"/man/*

out="$target_dir/debian"
mkdir -p "$out"
# --no-build: both binaries were built above (cargo-deb would build only
# this package's own). --strip: the release profile keeps line tables for
# backtraces in development; the package ships lean binaries.
cargo deb -p openclaw-egress --no-build --locked --strip --output "$out" >&2
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
deb="$out/openclaw-egress_${version}-1_$(dpkg --print-architecture).deb"
if [ ! -f "$deb" ]; then
    echo "build-deb.sh: cargo deb did not write $deb" >&2
    ls -l "$out" >&2
    exit 1
fi
echo "$deb"
