#!/usr/bin/env bash
# Builds sluice's Debian package: the suite's one release program (daemons/sluice: the four
# daemons and sluicectl, each run under its own name through a link),
# their man pages and shell completions (written from each program's clap definition by
# sluice-manual, a program of the tests crate that never ships), the DEP-5 copyright file of
# every crate they link (packaging/copyright.sh: cargo-about and cargo metadata), then cargo-deb with the
# metadata in daemons/sluice/Cargo.toml, then lintian. Prints the .deb's path as its last
# line (the system tests read it).
#
# Environment: SLUICE_DEB_PROFILE=dev packages the debug build instead of the release one
# (faster to build while working on the packaging; never for shipping). SLUICE_DEB_REUSE_KEY:
# when the last package was built under the same key, it is reused as it is (the system
# tests pass the test run's id, so parallel test processes build it once per run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version > /dev/null 2>&1; then
    echo "build-deb.sh: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
    exit 1
fi
if ! cargo about --version > /dev/null 2>&1; then
    echo "build-deb.sh: cargo-about is missing; install it with: cargo install cargo-about --locked --features cli" >&2
    exit 1
fi

profile=${SLUICE_DEB_PROFILE:-release}
reuse_stamp=target/debian/.reuse-key
if [ -n "${SLUICE_DEB_REUSE_KEY:-}" ] && [ -f "$reuse_stamp" ] \
    && [ "$(head -n1 "$reuse_stamp")" = "$SLUICE_DEB_REUSE_KEY" ]; then
    reused=$(sed -n 2p "$reuse_stamp")
    if [ -f "$reused" ]; then
        echo "== reusing $reused (built for this run)" >&2
        echo "$reused"
        exit 0
    fi
fi
case "$profile" in
    release) binaries=target/release ;;
    dev) binaries=target/debug ;;
    *) echo "build-deb.sh: SLUICE_DEB_PROFILE must be release or dev" >&2; exit 1 ;;
esac
echo "== cargo build ($profile): sluice (the daemons and sluicectl)" >&2
cargo build --locked --profile "$profile" -p sluice >&2
# Built on its own: building it together with the daemons would unify the tests crate's
# dependency features into the shipped binaries.
cargo build --locked --profile "$profile" -p sluice-tests --bin sluice-manual >&2

echo "== man pages and completions" >&2
generated=$binaries/sluice-packaging
rm -rf "$generated"
mkdir -p "$generated/man" "$generated/completions" "$generated/links"
# The names the program runs under, as links to where the package puts it (/usr/lib/sluice/
# sluice, from /usr/sbin and /usr/bin alike). They dangle here, so cargo-deb packs them as the
# links they are.
for program in sluice-monitor sluice-scraper sluice-ingest-worker sluice-web sluicectl; do
    ln -s ../lib/sluice/sluice "$generated/links/$program"
done
"$binaries/sluice-manual" --man "$generated/man" --completions "$generated/completions" >&2
# The one page written by hand: the D-Bus API (section 7).
cp packaging/man/sluice-dbus.7 "$generated/man/"
# Compressed here: cargo-deb leaves files under the target directory as they are.
gzip -9n "$generated"/man/*

echo "== copyright (DEP-5, every linked crate: packaging/copyright.sh)" >&2
packaging/copyright.sh "$generated/copyright" "$binaries/sluice-manual" >&2

echo "== cargo deb" >&2
mkdir -p target/debian
cargo deb --no-build --profile "$profile" -p sluice -o target/debian/ >&2
version=$(cargo metadata --format-version 1 --no-deps \
    | grep -o '"name":"sluice","version":"[^"]*"' | sed 's/.*"version":"\([^"]*\)"/\1/')
deb=target/debian/sluice_${version}-1_$(dpkg --print-architecture).deb
test -f "$deb" || { echo "build-deb.sh: cargo deb wrote no $deb" >&2; exit 1; }

if command -v lintian > /dev/null; then
    echo "== lintian" >&2
    # Errors fail the build; every warning left is overridden, with its reason, in
    # packaging/debian/sluice.lintian-overrides.
    lintian --fail-on error,warning "$deb" >&2
fi

deb=$(realpath "$deb")
if [ -n "${SLUICE_DEB_REUSE_KEY:-}" ]; then
    printf '%s\n%s\n' "$SLUICE_DEB_REUSE_KEY" "$deb" > "$reuse_stamp"
else
    rm -f "$reuse_stamp"
fi
echo "$deb"
