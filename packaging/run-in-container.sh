#!/usr/bin/env bash
# Runs the whole sluice suite for real on this machine, even where systemd is not PID 1:
# builds the .deb, boots a throwaway systemd container made from the host's own root (an
# overlay whose writes go to a tmpfs), installs the package there with apt-get, starts
# sluice.target and prints where to look. The container shares the host's network, so the
# dashboard and the API answer on the host's 127.0.0.1:8080. Ctrl-C powers the container
# off and removes everything; nothing on the host changes (apart from installing
# systemd-container, cargo-deb and cargo-about when they are missing, and the build in
# target/).
#
# Environment: SLUICE_DEB=path/to/sluice.deb uses that package instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo > /dev/null; then
        exec sudo --preserve-env=PATH,SLUICE_DEB,CARGO_HOME,RUSTUP_HOME "$0" "$@"
    fi
    echo "run-in-container.sh: needs root (mounts and systemd-nspawn)" >&2
    exit 1
fi

say() { printf '== %s\n' "$*" >&2; }

# What it needs, installed only when missing.
if ! command -v systemd-nspawn > /dev/null; then
    say "installing systemd-container"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container
fi
if [ -z "${SLUICE_DEB:-}" ] && ! cargo deb --version > /dev/null 2>&1; then
    say "installing cargo-deb"
    cargo install cargo-deb --locked
fi
if [ -z "${SLUICE_DEB:-}" ] && ! cargo about --version > /dev/null 2>&1; then
    say "installing cargo-about (the package's copyright file)"
    cargo install cargo-about --locked --features cli --version 0.9.3
fi

# The dashboard's port must be free on the host: the container shares its network.
if ss -Hltn 'sport = :8080' | grep -q .; then
    echo "run-in-container.sh: something already listens on port 8080:" >&2
    ss -ltnp 'sport = :8080' >&2
    exit 1
fi

if [ -n "${SLUICE_DEB:-}" ]; then
    deb=$(realpath "$SLUICE_DEB")
else
    say "building the .deb (release build; the first one takes a while)"
    deb=$(packaging/build-deb.sh | tail -n1)
fi
say "package: $deb"

machine=sluice-run-$$
base=$(mktemp -d "/tmp/$machine.XXXXXX")
root=$base/root
nspawn_pid=
leader=

cleanup() {
    trap - EXIT INT TERM
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2> /dev/null; then
        say "powering the container off"
        # SIGTERM asks nspawn to shut the container down cleanly.
        kill -TERM "$nspawn_pid" 2> /dev/null || true
        for _ in $(seq 1 600); do
            kill -0 "$nspawn_pid" 2> /dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn_pid" 2> /dev/null; then
            # Killing the container's PID 1 ends its whole PID namespace.
            [ -n "$leader" ] && kill -KILL "$leader" 2> /dev/null || true
            kill -KILL "$nspawn_pid" 2> /dev/null || true
        fi
        wait "$nspawn_pid" 2> /dev/null || true
    fi
    mountpoint -q "$root" && umount "$root"
    mountpoint -q "$base" && umount "$base"
    rmdir "$base" 2> /dev/null || true
    say "cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

inside() {
    nsenter --target "$leader" --all --root --wd -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= \
        DEBIAN_FRONTEND=noninteractive "$@"
}

say "mounting a throwaway copy of / at $root"
mount -t tmpfs -o mode=0700 tmpfs "$base"
mkdir "$base/upper" "$base/work" "$root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$root"
# A new machine id for the container's own journal; no host services that would get in the
# way (a second PostgreSQL, apt timers holding the dpkg lock).
rm -f "$root/etc/machine-id"
for unit in multi-user.target.wants/postgresql.service multi-user.target.wants/e2scrub_reap.service \
    timers.target.wants/apt-daily.timer timers.target.wants/apt-daily-upgrade.timer \
    timers.target.wants/dpkg-db-backup.timer timers.target.wants/e2scrub_all.timer \
    timers.target.wants/fstrim.timer timers.target.wants/man-db.timer; do
    rm -f "$root/etc/systemd/system/$unit"
done
# The host image forbids maintainer scripts to start services (policy-rc.d exits 101); the
# container is a booted machine where installing starts them.
rm -f "$root/usr/sbin/policy-rc.d"
cp "$deb" "$root/root/"

say "booting systemd in the container"
# nspawn's own seccomp filter refuses the landlock calls, with which the ingest worker
# confines its processors; a machine booted for real has no such filter.
systemd-nspawn --register=no --keep-unit --quiet -b -M "$machine" -D "$root" \
    --system-call-filter='landlock_create_ruleset landlock_add_rule landlock_restrict_self' \
    < /dev/null > "$base/console.log" 2>&1 &
nspawn_pid=$!
for _ in $(seq 1 600); do
    for child in $(cat "/proc/$nspawn_pid/task/$nspawn_pid/children" 2> /dev/null); do
        if grep -q '^NSpid:.*[[:space:]]1$' "/proc/$child/status" 2> /dev/null; then
            leader=$child
        fi
    done
    [ -n "$leader" ] && break
    kill -0 "$nspawn_pid" 2> /dev/null || break
    sleep 0.1
done
if [ -z "$leader" ]; then
    echo "run-in-container.sh: the container did not start:" >&2
    tail -n 40 "$base/console.log" >&2
    exit 1
fi
state=
for _ in $(seq 1 600); do
    state=$(inside systemctl is-system-running 2> /dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.2
done
case "$state" in
    running|degraded) ;;
    *) echo "run-in-container.sh: the container did not boot (state '$state'):" >&2
       tail -n 40 "$base/console.log" >&2
       exit 1 ;;
esac

say "installing $(basename "$deb") with apt-get (its postinst starts sluice.target)"
inside apt-get install -y --no-install-recommends "/root/$(basename "$deb")" >&2
inside systemctl start sluice.target
for _ in $(seq 1 300); do
    inside systemctl is-active --quiet sluice-monitor.service sluice-scraper.service \
        sluice-web.service sluice-ingest-worker@1.service sluice-ingest-worker@2.service \
        && break
    sleep 0.2
done
inside systemctl --no-pager list-units --all 'sluice*'

enter="nsenter --target $leader --all --root --wd"
cat << EOF_INFO

sluice is running in container $machine (systemd PID $leader on the host).

  Dashboard and API:  http://127.0.0.1:8080/
  Admin API token:    $(inside cat /etc/sluice/api-token)
  Read API token:     $(inside cat /etc/sluice/read-token)
                      (e.g. curl -H "Authorization: Bearer <token>" http://127.0.0.1:8080/api/jobs;
                      the dashboard asks for one of them once)

Run commands inside the container (as root, from another terminal):
  $enter systemctl status sluice.target 'sluice-*'
  $enter journalctl -f -u 'sluice-*'
  $enter busctl introspect org.sluice.Monitor1 /org/sluice/Monitor1
  $enter sluicectl status
  $enter sluicectl workers 4      # scale the ingest workers live
  $enter sh -c 'echo hello > /var/lib/sluice/inbox/hello.txt'

Ctrl-C powers the container off and removes it.
EOF_INFO

# Until Ctrl-C (or the container stops by itself, e.g. after `systemctl poweroff` inside).
wait "$nspawn_pid" || true
nspawn_pid=
