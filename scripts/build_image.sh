#!/usr/bin/env bash
# Build the Wharf image with podman and check that what it contains really serves.
#
#   scripts/build_image.sh            # as root; takes a few minutes the first time
#
# For machines without a Docker daemon or registry access (see docs/operations.md): the
# Dockerfile's BASE is a Debian bookworm image made here with debootstrap (bookworm ships
# Python 3.11) and cached as localhost/bookworm-python:3.11.  `podman run` does not work in
# such sandboxes, so the script exports the built image's filesystem and runs its
# ENTRYPOINT + CMD with chroot, as the image's user and with the image's environment, on
# free ports and a temporary data directory; it waits for /healthz from outside, runs the
# image's HEALTHCHECK command inside, then stops the broker with SIGTERM and expects exit 0.
#
# Not part of the test suite.  Environment overrides:
#   IMAGE=localhost/wharf:test   the tag to build
#   BASE_IMAGE=localhost/bookworm-python:3.11   the cached base image
#   REBUILD_BASE=1               remake the base even if it exists
set -euo pipefail

IMAGE=${IMAGE:-localhost/wharf:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/bookworm-python:3.11}
READY_TIMEOUT_S=60
STOP_TIMEOUT_S=30

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build_image.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, podman and chroot need it)"

# --- tools -------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Scratch space; everything is removed on exit, whatever happens.
WORK=$(mktemp -d /tmp/wharf-image.XXXXXX)
BROKER_PID=""
CID=""
ROOTFS=""
PROC_MOUNTED=""
cleanup() {
  set +e
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -KILL "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
  fi
  [ -n "$PROC_MOUNTED" ] && umount "$PROC_MOUNTED"
  [ -n "$CID" ] && podman rm -f "$CID" >/dev/null 2>&1
  [ -n "$ROOTFS" ] && rm -rf "$ROOTFS"
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- base image: Debian bookworm + python3, cached -------------------------------------------
if [ -n "${REBUILD_BASE:-}" ] || ! podman image exists "$BASE_IMAGE"; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  log "making $BASE_IMAGE with debootstrap from $mirror (a few minutes)"
  ROOTFS="$WORK/rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  # Trust the same extra CAs as this host (e.g. a TLS-intercepting egress proxy), so pip
  # inside the build can reach the package index.  Only this local base gets them.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
  fi
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  # The same Config as python:3.11-slim where it matters to the Dockerfile.
  tar -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >"$WORK/import.log" 2>&1 \
    || { cat "$WORK/import.log" >&2; die "podman import failed"; }
  rm -rf "$ROOTFS"
  ROOTFS=""
else
  log "using cached $BASE_IMAGE"
fi

# --- the image ---------------------------------------------------------------------------
# Build from a snapshot of the tree, so the check below compares the image with exactly what
# it was built from even if files change meanwhile (.dockerignore still applies inside it).
CONTEXT="$WORK/context"
mkdir -p "$CONTEXT"
tar -C "$REPO" -c --exclude=./.git --exclude=./.venv --exclude=./data --exclude=./build \
  --exclude=./dist --exclude=./.typecheck --exclude=./.mypy_cache --exclude=./.ruff_cache \
  --exclude=./.hypothesis --exclude=__pycache__ . | tar -C "$CONTEXT" -x
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
log "building $IMAGE"
podman build --isolation=chroot --format docker --build-arg "BASE=$BASE_IMAGE" \
  -t "$IMAGE" "$CONTEXT" >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log" >&2; die "podman build failed (log above)"; }
podman image inspect "$IMAGE" --format '{{.Id}}' >/dev/null

fmt_config() { podman image inspect "$IMAGE" --format "$1"; }
ENTRYPOINT=$(fmt_config '{{json .Config.Entrypoint}}')
CMD=$(fmt_config '{{json .Config.Cmd}}')
IMAGE_USER=$(fmt_config '{{.Config.User}}')
HEALTHCHECK=$(podman inspect --type image "$IMAGE" --format '{{json .Config.Healthcheck}}' 2>/dev/null \
  || podman inspect --type image "$IMAGE" --format '{{json .HealthCheck}}')
SIZE=$(fmt_config '{{.Size}}')
log "image: entrypoint=$ENTRYPOINT cmd=$CMD user=$IMAGE_USER size=$((SIZE / 1024 / 1024)) MiB"
log "healthcheck: $HEALTHCHECK"

# --- run its contents under chroot -----------------------------------------------------------
ROOTFS="$WORK/imgfs"
mkdir -p "$ROOTFS"
CID=$(podman create "$IMAGE")
podman export "$CID" | tar -C "$ROOTFS" -x
# (podman rm complains about systemd healthcheck timers where there is no systemd.)
podman rm "$CID" >/dev/null 2>"$WORK/rm.log" || { cat "$WORK/rm.log" >&2; die "podman rm failed"; }
CID=""

mount --bind /proc "$ROOTFS/proc"
PROC_MOUNTED="$ROOTFS/proc"
log "inside: $(chroot "$ROOTFS" /opt/wharf/bin/wharf --version), $(chroot "$ROOTFS" /opt/wharf/bin/python3 --version)"

# The installed package is the source it was built from (a stale cached layer would not be).
SITE=$(chroot "$ROOTFS" /opt/wharf/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 - "$CONTEXT" "$ROOTFS$SITE/wharf" <<'EOF' || die "the image's wharf package differs from its source"
import filecmp, sys
from pathlib import Path
repo, installed = Path(sys.argv[1]), Path(sys.argv[2])
differ = []
count = 0
for src_dir, dst_dir in ((repo / "client", installed),
                         (repo / "broker", installed / "broker"),
                         (repo / "protocol", installed / "protocol")):
    for src in src_dir.rglob("*.py"):
        count += 1
        dst = dst_dir / src.relative_to(src_dir)
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            differ.append(str(src.relative_to(repo)))
if differ:
    sys.exit("not in the image as in its source: " + ", ".join(sorted(differ)))
print(f"==> the image's wharf package matches its source ({count} .py files)", file=sys.stderr)
EOF

# Two free ports on this machine (the chroot shares its network).
read -r NATIVE_PORT HTTP_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)

# A fresh data directory inside the image, owned by the image's user.
DATA_DIR=/tmp/wharf-data
mkdir -p "$ROOTFS$DATA_DIR"
uid_gid=$(chroot "$ROOTFS" id -u "$IMAGE_USER"):$(chroot "$ROOTFS" id -g "$IMAGE_USER")
chown "$uid_gid" "$ROOTFS$DATA_DIR"

# The image's environment (PATH, WHARF_*), then this run's overrides.
mapfile -t IMAGE_ENV < <(fmt_config '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
RUN_ENV=("${IMAGE_ENV[@]}" "HOME=/var/lib/wharf" "WHARF_HOST=127.0.0.1"
         "WHARF_PORT=$NATIVE_PORT" "WHARF_HTTP_PORT=$HTTP_PORT" "WHARF_DATA_DIR=$DATA_DIR")
mapfile -t ARGV < <(python3 -c 'import json, sys; [print(a) for a in json.loads(sys.argv[1]) + json.loads(sys.argv[2])]' "$ENTRYPOINT" "$CMD")
WORKDIR=$(fmt_config '{{.Config.WorkingDir}}')

log "starting: chroot --userspec=$uid_gid ${ARGV[*]} (native $NATIVE_PORT, http $HTTP_PORT)"
# chroot and env both exec, so $! is the broker's own pid.
chroot --userspec="$uid_gid" "$ROOTFS" env -i -C "${WORKDIR:-/}" "${RUN_ENV[@]}" "${ARGV[@]}" \
  >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!

probe() { # probe PORT PATH: prints the HTTP status and body, fails on no answer
  python3 - "$1" "$2" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=2) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
EOF
}

deadline=$((SECONDS + READY_TIMEOUT_S))
until health=$(probe "$HTTP_PORT" /healthz 2>/dev/null) && [ "${health%% *}" = 200 ]; do
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    cat "$WORK/broker.log" >&2
    die "the broker exited before /healthz answered"
  fi
  [ $SECONDS -lt $deadline ] || { cat "$WORK/broker.log" >&2; die "no /healthz within ${READY_TIMEOUT_S}s"; }
  sleep 0.5
done
log "/healthz: $health"
broker_uid=$(awk '/^Uid:/{print $2}' "/proc/$BROKER_PID/status")
[ "$broker_uid" = "${uid_gid%%:*}" ] || die "the broker runs as uid $broker_uid, not $IMAGE_USER"
log "broker pid $BROKER_PID runs as uid $broker_uid ($IMAGE_USER)"
log "/readyz: $(probe "$HTTP_PORT" /readyz)"
metric_lines=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
  "http://127.0.0.1:$HTTP_PORT/metrics" | grep -c '^wharf_') || die "/metrics has no wharf_ series"
log "/metrics: $metric_lines wharf_* samples"

# The image's own HEALTHCHECK command, run inside the image as Docker would.
hc_argv=$(python3 -c '
import json, sys
hc = json.loads(sys.argv[1]) or {}
test = hc.get("Test") or hc.get("test") or []
assert test and test[0] == "CMD", test
print(json.dumps(test[1:]))' "$HEALTHCHECK") || die "unexpected HEALTHCHECK: $HEALTHCHECK"
mapfile -t HC_ARGV < <(python3 -c 'import json, sys; [print(a) for a in json.loads(sys.argv[1])]' "$hc_argv")
chroot --userspec="$uid_gid" "$ROOTFS" env -i "${RUN_ENV[@]}" "${HC_ARGV[@]}" \
  || die "the image's HEALTHCHECK command failed"
log "HEALTHCHECK command inside the image: exit 0"

# The SDK installed in the image, against the broker (guest/guest: same loopback).
chroot --userspec="$uid_gid" "$ROOTFS" env -i "${RUN_ENV[@]}" python3 -c '
import asyncio, os, wharf

async def main() -> None:
    url = "wharf://guest:guest@127.0.0.1:" + os.environ["WHARF_PORT"]
    async with await wharf.connect(url) as conn:
        await conn.declare_queue("image-smoke", durable=True)
        await conn.publish("", "image-smoke", b"hello", persistent=True)
        msg = await conn.get("image-smoke")
        assert msg is not None and msg.body == b"hello", msg
        await msg.ack()
    print("   ", wharf.__file__)

asyncio.run(main())' || die "publish/get through the image's SDK failed"
log "publish + get + ack through the image's own SDK: ok"

log "stopping the broker with SIGTERM"
kill -TERM "$BROKER_PID"
deadline=$((SECONDS + STOP_TIMEOUT_S))
while kill -0 "$BROKER_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
if kill -0 "$BROKER_PID" 2>/dev/null; then
  cat "$WORK/broker.log" >&2
  die "the broker did not stop within ${STOP_TIMEOUT_S}s of SIGTERM"
fi
rc=0
wait "$BROKER_PID" || rc=$?
BROKER_PID=""
if [ "$rc" -ne 0 ]; then
  cat "$WORK/broker.log" >&2
  die "the broker exited with status $rc after SIGTERM"
fi
log "broker log:"
sed 's/^/    /' "$WORK/broker.log" >&2
echo "OK: $IMAGE serves /healthz from its own filesystem as user $IMAGE_USER and stops cleanly on SIGTERM"
