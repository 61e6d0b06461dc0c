#!/usr/bin/env bash
# The containers end to end, on a Docker engine of its own (no registry needed):
#   1. starts dockerd by hand (overlay2, else vfs; no iptables, no default bridge; all in a temp dir)
#   2. builds the local base images (scripts/docker_base_images.sh) and the app image
#   3. `compose up` with docker-compose.yml + docker-compose.ci.yml: postgres, redis, migrate,
#      the one-shot study (a tiny study on a small read-only copy of the data: STUDY_ARGS), api,
#      one worker
#   4. waits for /readyz, POSTs a full-resolution X-ray and polls until it is done
#   5. scales the workers to 2 and shows that both take jobs (per-container worker logs)
#   6. tears the stack down; dockerd, its mounts and the temp dir go even on failure
# Prints how long each stage took. Needs root (dockerd, debootstrap, apt-get).
#
# Environment: PNEUMOSCOPE_DATA_DIR / PNEUMOSCOPE_SAMPLES_DIR (default ../shared/data/...),
# E2E_PER_CLASS (images per class in the data subset, default 60: the input gate needs 10+
# validation images), STUDY_ARGS, E2E_API_PORT (default: a free port), E2E_STORAGE_DRIVER (default
# overlay2, falls back to vfs), E2E_KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=$(cd .. && pwd)/shared
DATA_SRC=${PNEUMOSCOPE_DATA_DIR:-$SHARED/data/chest_xray}
SAMPLES=${PNEUMOSCOPE_SAMPLES_DIR:-$SHARED/data/samples}
PER_CLASS=${E2E_PER_CLASS:-60}
API_PORT=${E2E_API_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PROJECT=pneumoscope-e2e
IMAGE=pneumoscope:e2e
BASE=local/python-base:bookworm
STUDY_ARGS=${STUDY_ARGS:---name e2e --budget 1 --max-epochs 1 --image-size 64 --families custom_cnn}
READY_TIMEOUT=${E2E_READY_TIMEOUT:-600}
JOB_TIMEOUT=${E2E_JOB_TIMEOUT:-300}

# ------------------------------------------------------------------ stage timing and clean-up
STAGE="" STAGE_T0=0 T_START=$SECONDS
TIMES=()
stage() {  # stage NAME: ends the running stage (if any) and starts NAME
  end_stage
  STAGE=$1 STAGE_T0=$SECONDS
  echo "==== $STAGE"
}
end_stage() {
  if [ -n "$STAGE" ]; then
    TIMES+=("$(printf '%5d s  %s' $((SECONDS - STAGE_T0)) "$STAGE")")
    echo "==== $STAGE: $((SECONDS - STAGE_T0)) s"
  fi
  STAGE=""
}
log() { echo "---- $*"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pneumoscope-e2e.XXXXXX")
DOCKERD_PID="" STACK_UP=""

compose() { $COMPOSE -p "$PROJECT" -f docker-compose.yml -f docker-compose.ci.yml "$@"; }

cleanup() {
  local rc=$? failed_stage=$STAGE
  set +e
  if [ "$rc" != 0 ] && [ -n "$STACK_UP" ]; then
    echo "#### FAILED in stage: ${failed_stage:-?}; containers and their last log lines:"
    compose ps
    compose logs --no-color --tail=60
  fi
  if [ -n "$STACK_UP" ]; then
    stage "tear down (compose down -v)"
    compose down -v --remove-orphans --timeout 20
  fi
  stage "stop dockerd, clean up"
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    log "stopping dockerd (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID"
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
  fi
  # what dockerd started from our temp dir (containerd, shims), by PID
  for pid in $(pgrep -f -- "$WORK" 2>/dev/null); do
    [ "$pid" != $$ ] && kill "$pid" 2>/dev/null
  done
  [ -e "$WORK/docker/exec/netns/default" ] && umount "$WORK/docker/exec/netns/default" 2>/dev/null
  awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  log "removing $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1))"
  if [ "${E2E_KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  end_stage
  echo "#### stage times"
  printf '%s\n' "${TIMES[@]}"
  printf '%5d s  total\n' $((SECONDS - T_START))
  if [ "$rc" = 0 ]; then echo "#### E2E PASSED"; else echo "#### E2E FAILED (exit $rc) in stage: ${failed_stage:-?}"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "needs root (dockerd, debootstrap)" >&2; exit 1; }
[ -d "$DATA_SRC/train/NORMAL" ] || { echo "no data at $DATA_SRC" >&2; exit 1; }
SAMPLE=$(find "$SAMPLES/kermany_full_res/val/NORMAL" -name '*.jpeg' | sort | sed -n 1p)
[ -n "$SAMPLE" ] || { echo "no full-resolution sample under $SAMPLES" >&2; exit 1; }

# ------------------------------------------------------------------ 1. tools and dockerd
stage "install tools (apt-get, if missing)"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
log "$COMPOSE: $($COMPOSE version 2>/dev/null | head -n 1)"

stage "start dockerd"
D=$WORK/docker
export DOCKER_HOST="unix://$D/docker.sock" DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
start_dockerd() {  # start_dockerd DRIVER: 0 once the engine answers
  mkdir -p "$D"
  dockerd --storage-driver="$1" --iptables=false --ip6tables=false --bridge=none \
    --data-root "$D/root" --exec-root "$D/exec" --host "unix://$D/docker.sock" \
    --pidfile "$D/dockerd.pid" >>"$D/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  kill "$DOCKERD_PID" 2>/dev/null
  wait "$DOCKERD_PID" 2>/dev/null
  DOCKERD_PID=""
  tail -5 "$D/dockerd.log"
  return 1
}
# overlay2 where the kernel allows it; vfs (a full copy of the image per layer and per
# container: slow and disk-hungry, but works everywhere) otherwise or with E2E_STORAGE_DRIVER=vfs.
DRIVER=${E2E_STORAGE_DRIVER:-overlay2}
if ! start_dockerd "$DRIVER"; then
  [ "$DRIVER" = vfs ] && exit 1
  log "dockerd with $DRIVER failed; falling back to vfs"
  DRIVER=vfs
  rm -rf "$D/root"
  start_dockerd vfs || exit 1
fi
log "dockerd $(docker version -f '{{.Server.Version}}'), storage driver $(docker info -f '{{.Driver}}'), pid $DOCKERD_PID"

# ------------------------------------------------------------------ 2. images
stage "base images (python, redis, postgres)"
bash scripts/docker_base_images.sh

stage "app image build"
if ! docker build --network host --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log"
  exit 1
fi
log "image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
log "layers:"
docker history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | grep -v '^0B' | cut -c1-110

stage "image smoke test (imports, non-root)"
docker run --rm --network none "$IMAGE" python -c \
  "import os, tensorflow, study.data.preprocess, service.api; print('uid', os.getuid(), 'tf', tensorflow.__version__)"

# ------------------------------------------------------------------ 3. the stack
stage "data subset ($PER_CLASS images per class)"
SUB=$WORK/data
for cls in NORMAL PNEUMONIA; do
  mkdir -p "$SUB/train/$cls"
  mapfile -t files < <(find "$DATA_SRC/train/$cls" -maxdepth 1 -type f | sort)
  cp -t "$SUB/train/$cls" "${files[@]:0:$PER_CLASS}"
done
chmod -R a+rX "$SUB" && chmod 755 "$WORK"
log "$(find "$SUB" -type f | wc -l) images in $SUB"

cat >"$WORK/e2e.env" <<EOF
APP_IMAGE=$IMAGE
BASE_IMAGE=$BASE
DATA_DIR=$SUB
API_PORT=$API_PORT
STUDY_ARGS=$STUDY_ARGS
LOG_LEVEL=info
EOF
export APP_IMAGE=$IMAGE BASE_IMAGE=$BASE DATA_DIR=$SUB API_PORT STUDY_ARGS LOG_LEVEL=info
unset MODEL_PATH API_KEY DATABASE_URL BROKER_URL STUDY_FORCE

stage "compose up (postgres, redis, migrate, tiny study, api, worker)"
STACK_UP=1
timeout 3000 $COMPOSE --env-file "$WORK/e2e.env" -p "$PROJECT" -f docker-compose.yml \
  -f docker-compose.ci.yml up -d --no-build
compose ps
for svc in migrate study; do
  cid=$(compose ps -a -q "$svc")
  docker inspect -f '{{.State.StartedAt}} {{.State.FinishedAt}} {{.State.ExitCode}}' "$cid" \
    | python3 -c "import sys, datetime as d; a, b, rc = sys.stdin.read().split(); f = lambda s: d.datetime.fromisoformat(s[:26].rstrip('Z')); print('---- $svc container ran %.0f s, exit %s' % ((f(b) - f(a)).total_seconds(), rc))"
done
compose logs --no-color study | tail -n 15

API=http://127.0.0.1:$API_PORT
cat >"$WORK/client.py" <<'EOF'
"""Tiny stdlib client: ready [N], predict FILE [COUNT]."""
import json, sys, time, urllib.error, urllib.request, uuid

API, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]


def get(path):
    try:
        with urllib.request.urlopen(API + path, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (OSError, ValueError) as e:
        return 0, str(e)


def post_file(path):
    boundary = uuid.uuid4().hex
    data = open(path, "rb").read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpeg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(API + "/v1/predictions", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.loads(r.read())
        assert r.status == 202, (r.status, out)
        return out


if cmd == "ready":
    want, deadline, last = int(args[0]), time.time() + float(args[1]), None
    while time.time() < deadline:
        code, body = get("/readyz")
        if code == 200 and isinstance(body, dict) and body.get("workers", 0) >= want:
            print("ready:", json.dumps(body))
            sys.exit(0)
        if (code, body) != last:
            print("waiting:", code, json.dumps(body)[:300], flush=True)
            last = (code, body)
        time.sleep(2)
    sys.exit(f"not ready with {want} worker(s) after {args[1]} s")
elif cmd == "predict":
    path, count, timeout = args[0], int(args[1]), float(args[2])
    jobs = [post_file(path) for _ in range(count)]
    print("accepted:", json.dumps(jobs[0]))
    deadline, final = time.time() + timeout, {}
    while len(final) < count and time.time() < deadline:
        for j in jobs:
            if j["id"] in final:
                continue
            url = j.get("status_url") or f"/v1/predictions/{j['id']}"
            code, body = get(url if url.startswith("/") else "/" + url.split("/", 3)[-1])
            if code == 200 and body.get("status") in ("done", "rejected", "failed"):
                final[j["id"]] = body
        time.sleep(1)
    bad = {k: v for k, v in final.items() if v.get("status") != "done"}
    if len(final) < count or bad:
        sys.exit(f"{count - len(final)} unfinished after {timeout} s; not done: {json.dumps(bad)[:800]}")
    print(f"{count} done; first:", json.dumps(next(iter(final.values())))[:600])
EOF

stage "wait for /readyz (db, broker, worker with model)"
python3 "$WORK/client.py" "$API" ready 1 "$READY_TIMEOUT"

stage "predict one full-resolution X-ray"
log "sample: $(basename "$SAMPLE") ($(stat -c %s "$SAMPLE") bytes)"
python3 "$WORK/client.py" "$API" predict "$SAMPLE" 1 "$JOB_TIMEOUT"

# ------------------------------------------------------------------ 5. scale the workers
done_per_worker() {  # "container count" per worker container: Celery's 'Task ... succeeded'
  for cid in $(compose ps -q worker); do
    printf '%s %s\n' "$(docker inspect -f '{{.Name}}' "$cid" | tr -d /)" \
      "$(docker logs "$cid" 2>&1 | grep -c 'succeeded in' || true)"
  done | sort
}
stage "scale workers to 2"
before=$(done_per_worker)
compose up -d --no-build --no-deps --scale worker=2 worker
python3 "$WORK/client.py" "$API" ready 2 "$READY_TIMEOUT"

stage "8 jobs on 2 workers"
python3 "$WORK/client.py" "$API" predict "$SAMPLE" 8 "$JOB_TIMEOUT"
after=$(done_per_worker)
log "jobs done per worker container before scaling: $(echo $before)"
log "jobs done per worker container after 8 more:   $(echo $after)"
python3 - "$before" "$after" <<'EOF'
import sys
parse = lambda s: {line.split()[0]: int(line.split()[1]) for line in s.splitlines() if line.strip()}
before, after = parse(sys.argv[1]), parse(sys.argv[2])
new = {name: n - before.get(name, 0) for name, n in after.items()}
print("---- new jobs per worker:", new)
if len(new) < 2 or min(new.values()) < 1:
    sys.exit("not every worker took a job")
EOF

stage "api container healthy (image HEALTHCHECK)"
api=$(compose ps -q api)
for _ in $(seq 90); do
  status=$(docker inspect -f '{{.State.Health.Status}}' "$api")
  [ "$status" = healthy ] && break
  sleep 2
done
log "api: $status; workers: $(for c in $(compose ps -q worker); do docker inspect -f '{{.State.Health.Status}}' "$c"; done | tr '\n' ' ')"
[ "$status" = healthy ]
end_stage
