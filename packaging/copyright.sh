#!/usr/bin/env bash
# Writes the package's machine-readable copyright file (DEP-5) to $1: sluice's own paragraph,
# one paragraph per crate the shipped program links (from `cargo metadata`: normal
# dependencies of the `sluice` package on the package's target) with the copyright lines
# of its licence files and its licence (found by cargo-about), SQLite's public-domain notice,
# and each licence's text or its file in /usr/share/common-licenses. The writer checks its own
# output (every shipped crate present with its licence) and fails the build otherwise.
#
# $2: the sluice-manual binary that writes it (target/<profile>/sluice-manual).
# cargo-about runs --frozen: the licence files come from the crates cargo already has (the
# build needs them anyway), so the file depends on Cargo.lock alone, never on the network.
set -euo pipefail
cd "$(dirname "$0")/.."
output=$1
manual=$2
target=x86_64-unknown-linux-gnu

if ! cargo about --version > /dev/null 2>&1; then
    echo "copyright.sh: cargo-about is missing; install it with: cargo install cargo-about --locked --features cli" >&2
    exit 1
fi
# SLUICE_COPYRIGHT_KEEP=DIR keeps cargo-about's and cargo metadata's JSON there (to look at).
if [ -n "${SLUICE_COPYRIGHT_KEEP:-}" ]; then
    work=$SLUICE_COPYRIGHT_KEEP
    mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
cargo metadata --format-version 1 --locked --filter-platform "$target" > "$work/metadata.json"
# One run over the workspace; the writer keeps only the crates
# the shipped program links.
cargo about generate --format json --frozen --workspace -c packaging/about.toml \
    --target "$target" -o "$work/about.json" 2> "$work/about.log" || {
    cat "$work/about.log" >&2
    exit 1
}
"$manual" --copyright "$output" --about "$work/about.json" --metadata "$work/metadata.json"
