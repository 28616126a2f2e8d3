#!/usr/bin/env bash
# make stack-test: docker-compose.yml for real, on this machine's CPUs. How a user checks a new
# deployment, and the last step of .ci/run.
#
#  1. a Docker engine: the one that answers, else a private dockerd this script starts (overlay2, its own
#     data root and socket, --iptables=false --bridge=none so the host's firewall is left alone) and
#     stops at the end; Debian's docker.io and debootstrap are installed where missing (root only);
#  2. Compose v2 (install-compose.sh); the base images, pulled, or where no registry answers built as
#     stand-ins tagged with the real names (stand-ins/: a debootstrap'd Debian, TensorFlow's CPU image,
#     Redis, PostgreSQL), reused while the content hash of their build files is the same;
#  3. the project's image from the Dockerfile (TF_VARIANT=, the CPU base), which must run as non-root, reused
#     while the content hash of its build is the same;
#  4. .env.example's placeholder passwords: `up` must refuse them before anything starts;
#  5. `up -d --scale worker=2` with compose.cpu.yml (no GPU reservation), healthchecks, migrate;
#     hardening of the containers (read-only root, no capabilities, no-new-privileges, the Redis
#     password on no command line); Flower answers with its login and refuses without;
#  6. two synthetic BadNets (made in a container of the image), a sweep through the orchestrator,
#     every step stored exactly once (status and sql), a report; a second sweep during which one
#     worker is killed: it still finishes, nothing doubled; `stop` then `up`: every result kept;
#  7. `--profile orchestrator down -v` (the reports volume is the orchestrator's): nothing left running.
# On a failure: the failing step and the last lines of the containers' logs; exit 1. Where Docker
# cannot run at all (no engine, and no root or no apt-get to start one) it skips with exit 0, except
# under CI=true, where that is a failure too.
set -Eeuo pipefail
trap 'echo "stack-test: exit $? at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PRIVATE_SOCKET=/run/badnet-prune-docker.sock
PRIVATE_ROOT=/var/lib/badnet-prune-docker
PRIVATE_EXEC=/run/badnet-prune-docker
PROJECT=badnet-prune-stack-test
IMAGE=badnet-prune:stack-test
LABEL=org.badnet-prune.stand-in
STEP="start"
STARTED_DOCKERD=""
SKIPPED=""
WORK=""
COMPOSE=()
export DOCKER_BUILDKIT=0  # the engine's own builder: no buildx plugin needed

say() { echo "stack-test [${SECONDS}s]: $*"; }
step() { STEP="$*"; say "== $STEP"; }
fail() { echo "stack-test: FAILED at step '$STEP': $*" >&2; exit 1; }
skip() {
    if [ "${CI:-}" = true ]; then
        fail "$1 (CI=true: CI must be able to run the stack test)"
    fi
    echo "stack-test: SKIPPED: $1"
    SKIPPED=yes
    exit 0
}

# --- clean-up, and what a failure shows ----------------------------------------------------------

show_logs() {
    local name
    for name in $(docker ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}' 2>/dev/null); do
        echo "----- $name ($(docker inspect -f '{{.State.Status}} exit {{.State.ExitCode}}' "$name" 2>/dev/null)), last lines:" >&2
        docker logs --tail 25 "$name" 2>&1 | sed 's/^/    /' >&2 || true
    done
}

finish() {
    local status=$?
    trap - EXIT
    if [ "$status" -ne 0 ]; then
        echo "stack-test: FAILED at step '$STEP' (exit $status)" >&2
        [ "${#COMPOSE[@]}" -gt 0 ] && show_logs
    fi
    if [ "${#COMPOSE[@]}" -gt 0 ]; then
        for project in "$PROJECT" "$PROJECT-placeholder"; do
            compose_in "$project" --profile orchestrator down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
        done
    fi
    docker rm -f "$PROJECT-synth" >/dev/null 2>&1 || true
    if [ -n "$WORK" ]; then
        # The synthetic BadNets belong to the image's user: remove them as that user where we are not root.
        [ "$(id -u)" = 0 ] || docker run --rm --network none -v "$WORK:/work" --entrypoint rm "$IMAGE" -rf /work/data \
            >/dev/null 2>&1 || true
        rm -rf "$WORK"
    fi
    [ -z "${BUILD_LOG:-}" ] || rm -f "$BUILD_LOG" "$BUILD_LOG".*
    if [ -n "$STARTED_DOCKERD" ]; then
        kill "$STARTED_DOCKERD" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
        say "stopped the Docker engine it started (pid $STARTED_DOCKERD)"
    fi
    [ "$status" -ne 0 ] || [ -n "$SKIPPED" ] || say "PASSED in ${SECONDS}s"
    exit "$status"
}
trap finish EXIT

# --- 1. a Docker engine ---------------------------------------------------------------------------

step "Docker engine"
engine_answers() { command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; }

install_debian_packages() {  # install_debian_packages PACKAGE...: apt-get where we may, else skip
    [ "$(id -u)" = 0 ] || skip "no Docker engine answers and installing $* needs root"
    command -v apt-get >/dev/null || skip "no Docker engine answers and there is no apt-get to install $*"
    say "installing $* (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! engine_answers; then
    export DOCKER_HOST="unix://$PRIVATE_SOCKET"
    if ! engine_answers; then
        [ "$(id -u)" = 0 ] || skip "no Docker engine answers, and starting one needs root"
        if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
            install_debian_packages docker.io
        fi
        mkdir -p "$PRIVATE_ROOT" "$PRIVATE_EXEC"
        say "starting a private dockerd (socket $PRIVATE_SOCKET, data root $PRIVATE_ROOT)"
        setsid dockerd --data-root "$PRIVATE_ROOT" --exec-root "$PRIVATE_EXEC/exec" \
            --pidfile "$PRIVATE_EXEC/dockerd.pid" -H "$DOCKER_HOST" --storage-driver overlay2 \
            --iptables=false --ip6tables=false --bridge=none >"$PRIVATE_ROOT.log" 2>&1 </dev/null &
        STARTED_DOCKERD=$!
        for _ in $(seq 1 60); do engine_answers && break; kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
        if ! engine_answers; then
            tail -n 15 "$PRIVATE_ROOT.log" >&2 || true
            skip "dockerd did not start here (log: $PRIVATE_ROOT.log)"
        fi
    fi
fi
say "engine: $(docker version --format 'Docker {{.Server.Version}}, API {{.Server.APIVersion}}') at ${DOCKER_HOST:-the default socket}"

step "Compose v2"
command -v python3 >/dev/null || skip "python3 (with pip) is needed to fetch Compose v2"
read -r -a COMPOSE <<<"$("$HERE/install-compose.sh")"
say "compose: $("${COMPOSE[@]}" version)"

compose_line() {  # compose_line PROJECT: the compose command on the test's env file only, in $LINE
    LINE=(env -i PATH="$PATH" HOME="${HOME:-/root}")
    [ -z "${DOCKER_HOST:-}" ] || LINE+=(DOCKER_HOST="$DOCKER_HOST")
    [ -z "${DOCKER_CONFIG:-}" ] || LINE+=(DOCKER_CONFIG="$DOCKER_CONFIG")
    LINE+=("${COMPOSE[@]}" -p "$1" --project-directory "$REPO" --env-file "$WORK/$1.env"
           -f "$REPO/docker-compose.yml" -f "$HERE/compose.cpu.yml")
}
compose_in() {  # compose_in PROJECT ARG...: compose with no variable of the caller (they would override)
    local LINE
    compose_line "$1"
    shift
    "${LINE[@]}" "$@"
}
timed_compose() {  # timed_compose SECONDS ARG...: compose on the test's project, killed after SECONDS
    local LINE seconds="$1"
    compose_line "$PROJECT"
    shift
    timeout "$seconds" "${LINE[@]}" "$@"
}
compose() { compose_in "$PROJECT" "$@"; }

# --- 2. base images -------------------------------------------------------------------------------

step "base images"
env_value() { sed -n "s/^$1=//p" "$REPO/.env.example" | tail -n 1; }
TF_VERSION="$(env_value TF_VERSION)"
# shellcheck source=stand-ins/base.env
. "$HERE/stand-ins/base.env"

# Extra CA certificates of this host (a TLS-intercepting proxy's), which the stand-ins must trust.
extra_certificates=()
for certificate in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    [ -f "$certificate" ] && extra_certificates+=("$certificate")
done
pip_certificate="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
if [ -f "$pip_certificate" ] && [ "$(readlink -f "$pip_certificate")" != /etc/ssl/certs/ca-certificates.crt ]; then
    extra_certificates+=("$pip_certificate")
fi

HASH="$( (cd "$HERE/stand-ins" && find . -type f -print0 | sort -z | xargs -0 sha256sum
          echo "TF_VERSION=$TF_VERSION"
          [ "${#extra_certificates[@]}" -eq 0 ] || cat "${extra_certificates[@]}") | sha256sum | cut -c1-16)"
BASE="badnet-prune-stand-in/debian:$DEBIAN_SUITE-$HASH"
BUILD_LOG="$(mktemp /tmp/badnet-prune-stack-test-build.XXXXXX)"

build_base() {
    docker image inspect "$BASE" >/dev/null 2>&1 && return
    [ "$(id -u)" = 0 ] || skip "building the Debian base of the stand-in images (debootstrap) needs root"
    command -v debootstrap >/dev/null || install_debian_packages debootstrap
    local rootfs
    rootfs="$(mktemp -d /var/tmp/badnet-prune-rootfs.XXXXXX)"
    say "debootstrap $DEBIAN_SUITE ($DEBIAN_MIRROR)"
    debootstrap --variant=minbase --include="$DEBIAN_INCLUDE" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
        >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; fail "debootstrap failed"; }
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main
EOF
    if [ "${#extra_certificates[@]}" -gt 0 ]; then
        local index=0
        for certificate in "${extra_certificates[@]}"; do
            index=$((index + 1))
            cp "$certificate" "$rootfs/usr/local/share/ca-certificates/host-$index.crt"
        done
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs.log"
    tar -C "$rootfs" --numeric-owner -cf - . |
        docker import --change 'CMD ["bash"]' --change "LABEL $LABEL=$HASH" - "$BASE" >/dev/null
    rm -rf "$rootfs"
}

base_image() {  # base_image NAME STAND-IN-FOLDER: NAME as it is, pulled, or built as a stand-in
    local name="$1" folder="$2" label
    if docker image inspect "$name" >/dev/null 2>&1; then
        label="$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$name")"
        if [ -z "$label" ] || [ "$label" = "$HASH" ]; then
            say "$name: ${label:+stand-in }already here"
            return
        fi
    elif timeout 120 docker pull -q "$name" >/dev/null 2>&1; then
        say "$name: pulled"
        return
    fi
    docker image inspect "$BASE" >/dev/null 2>&1 || fail "the Debian base $BASE is missing"
    say "$name: building a stand-in (stand-ins/$folder)"
    docker build --network host --build-arg "BASE=$BASE" --build-arg "TF_VERSION=$TF_VERSION" \
        --label "$LABEL=$HASH" -t "$name" "$HERE/stand-ins/$folder" >"$BUILD_LOG" 2>&1 ||
        { tail -n 30 "$BUILD_LOG" >&2; fail "building the stand-in $name failed"; }
}

stand_in_needed() {  # stand_in_needed NAME: neither the real image nor a current stand-in is here, nor pullable
    local label
    if docker image inspect "$1" >/dev/null 2>&1; then
        label="$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1")"
        [ -n "$label" ] && [ "$label" != "$HASH" ]
    else
        ! timeout 120 docker pull -q "$1" >/dev/null 2>&1
    fi
}
for name in "tensorflow/tensorflow:$TF_VERSION" $(sed -n 's/^ *image: \(\(redis\|postgres\):.*\)$/\1/p' \
    "$REPO/docker-compose.yml" | sort -u); do
    if stand_in_needed "$name"; then
        build_base
        break
    fi
done
# The three at once (downloads and package installs, more waiting than computing), each with its own log.
builds=()
for pair in "tensorflow/tensorflow:$TF_VERSION tensorflow" \
    "$(sed -n 's/^ *image: \(redis:.*\)$/\1/p' "$REPO/docker-compose.yml" | sort -u) redis" \
    "$(sed -n 's/^ *image: \(postgres:.*\)$/\1/p' "$REPO/docker-compose.yml" | sort -u) postgres"; do
    read -r name folder <<<"$pair"
    BUILD_LOG="$BUILD_LOG.$folder" base_image "$name" "$folder" &
    builds+=("$!:$name")
done
for build in "${builds[@]}"; do
    wait "${build%%:*}" || fail "no base image ${build#*:}"
done

# --- 3. the project's image -----------------------------------------------------------------------

step "project image (Dockerfile, TF_VARIANT=)"
# Reused while the content hash of its build (the files .dockerignore lets in, the Dockerfile, the base
# image's id) is the one it was built from: a CI run on an unchanged tree builds nothing.
CONTEXT_LABEL=org.badnet-prune.context
context_hash="$( (cd "$REPO" && find pyproject.toml README.md badnet_prune pipeline worker orchestrator db \
        deploy/gpu-slot.sh -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
    sha256sum Dockerfile .dockerignore
    echo "TF_VERSION=$TF_VERSION base $(docker image inspect -f '{{.Id}}' "tensorflow/tensorflow:$TF_VERSION")") |
    sha256sum | cut -c1-16)"
built_from="$(docker image inspect -f "{{index .Config.Labels \"$CONTEXT_LABEL\"}}" "$IMAGE" 2>/dev/null || true)"
if [ "$built_from" = "$context_hash" ]; then
    say "image $IMAGE: already built from this content ($context_hash)"
else
    docker build --network host --build-arg TF_VARIANT= --build-arg "TF_VERSION=$TF_VERSION" \
        --label "$CONTEXT_LABEL=$context_hash" -t "$IMAGE" "$REPO" >"$BUILD_LOG" 2>&1 ||
        { tail -n 30 "$BUILD_LOG" >&2; fail "building the project's image failed"; }
fi
uid="$(docker run --rm --network none --entrypoint id "$IMAGE" -u)"
[ "$uid" != 0 ] || fail "the image runs as root"
say "image $IMAGE runs as uid $uid"

# --- 4. the env files: fresh passwords, and .env.example's placeholders ---------------------------

step "env files"
WORK="$(mktemp -d /tmp/badnet-prune-stack-test.XXXXXX)"
chmod 0755 "$WORK"
mkdir -p "$WORK/data" "$WORK/sweeps"
chmod 0777 "$WORK/data"  # the image's user writes the synthetic BadNets here
flower_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
secret() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

write_env() {  # write_env PROJECT KEEP_PLACEHOLDERS: .env.example with the test's settings
    local project="$1" keep="$2" key value
    while IFS= read -r line; do
        if [[ "$line" =~ ^([A-Z_][A-Z0-9_]*)=(.*)$ ]]; then
            key="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
            case "$key" in
                COMPOSE_PROJECT_NAME) value="$project" ;;
                BADNET_DATA_DIR) value="$WORK/data" ;;
                BADNET_SWEEPS_DIR) value="$WORK/sweeps" ;;
                BADNET_IMAGE) value="$IMAGE" ;;
                TF_VARIANT) value="" ;;
                WORKER_GPUS) value="" ;;
                WORKER_CONCURRENCY) value=1 ;;
                BADNET_PRUNE_VISIBILITY_TIMEOUT) value=20 ;;  # a killed worker's task comes back after 20 s
                FLOWER_BIND) value=127.0.0.1 ;;
                FLOWER_PORT) value="$flower_port" ;;
                *) [[ "$value" == change-me* && "$keep" == no ]] && value="$(secret)" ;;
            esac
            line="$key=$value"
        fi
        printf '%s\n' "$line"
    done <"$REPO/.env.example" >"$WORK/$project.env"
    chmod 0600 "$WORK/$project.env"
}
write_env "$PROJECT" no
write_env "$PROJECT-placeholder" yes
env_file_value() { sed -n "s/^$1=//p" "$WORK/$PROJECT.env" | tail -n 1; }
compose --profile orchestrator down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true  # what a killed earlier run left
# Two synthetic BadNets for the sweeps, made meanwhile (step "two synthetic BadNets" waits for them).
synth='for seed in 1 2; do badnet-prune synth "/data/model-$seed" --quick --classes 4 --seed "$seed" || exit; done'
docker run --rm --name "$PROJECT-synth" --network none --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges:true -v "$WORK/data:/data" --entrypoint sh "$IMAGE" -c "$synth" \
    >"$WORK/synth.log" 2>&1 &
synth_pid=$!

step "placeholder passwords refused before anything starts"
if output="$(compose_in "$PROJECT-placeholder" up -d --no-build --pull never --scale worker=2 2>&1)"; then
    fail "up started the stack with the placeholder passwords of .env.example"
fi
refusal="$(compose_in "$PROJECT-placeholder" logs --no-log-prefix preflight 2>&1)"
grep -q '^preflight: [A-Z_]*PASSWORD in .env is empty or still the placeholder' <<<"$refusal" ||
    fail "no one-line refusal from preflight; up said: $output; preflight said: $refusal"
[ "$(grep -c . <<<"$refusal")" -eq 1 ] || fail "the refusal is not one line: $refusal"
started="$(docker ps -a --filter "label=com.docker.compose.project=$PROJECT-placeholder" \
    --format '{{.Label "com.docker.compose.service"}} {{.State}}' | grep -v '^preflight ' | grep -v ' created$' || true)"
[ -z "$started" ] || fail "containers started despite the placeholders: $started"
say "refused: $refusal"
compose_in "$PROJECT-placeholder" --profile orchestrator down -v --remove-orphans --timeout 10 >/dev/null 2>&1

# --- 5. the stack ---------------------------------------------------------------------------------

step "up -d --scale worker=2 (CPU override)"
compose up -d --no-build --pull never --scale worker=2 >/dev/null 2>&1 || { compose ps -a >&2; fail "up failed"; }

container_of() { compose ps -a -q "$1" | sed -n 1p; }  # sed reads to the end: compose exits 255 on a closed pipe

workers_ready() {  # two workers running, each with Celery's "ready." since its last start
    local ready=0 container
    for container in $(compose ps -q --status running worker); do
        docker logs --since "$(docker inspect -f '{{.State.StartedAt}}' "$container")" "$container" 2>&1 |
            grep -q ' ready\.$' && ready=$((ready + 1))
    done
    [ "$ready" -eq 2 ]
}

wait_for_stack() {  # healthy Redis and PostgreSQL, migrate exited 0, two workers and Flower running
    local deadline=$((SECONDS + ${1:-240})) redis postgres migrate roles
    while [ "$SECONDS" -lt "$deadline" ]; do
        redis="$(docker inspect -f '{{.State.Health.Status}}' "$(container_of redis)" 2>/dev/null || true)"
        postgres="$(docker inspect -f '{{.State.Health.Status}}' "$(container_of postgres)" 2>/dev/null || true)"
        migrate="$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(container_of migrate)" 2>/dev/null || true)"
        [ "$migrate" = "exited 0" ] || [ "$migrate" = "${migrate#exited}" ] || fail "migrate failed: $migrate"
        roles="$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(container_of db-roles)" 2>/dev/null || true)"
        [ "$roles" = "exited 0" ] || [ "$roles" = "${roles#exited}" ] || fail "db-roles failed: $roles"
        if [ "$redis $postgres $migrate $roles" = "healthy healthy exited 0 exited 0" ] && workers_ready &&
            [ "$(compose ps -q --status running flower | wc -l)" -eq 1 ]; then
            return 0
        fi
        sleep 2
    done
    compose ps -a >&2
    fail "the stack was not up after ${1:-240}s (redis: $redis, postgres: $postgres, migrate: $migrate, workers ready:" \
        "$(workers_ready && echo yes || echo no))"
}
wait_for_stack 240
say "redis and postgres healthy, migrate and db-roles exited 0, 2 workers ready, flower running"

step "container hardening"
redis_password="$(env_file_value REDIS_PASSWORD)"
redis="$(container_of redis)"
if docker inspect -f '{{json .Path}} {{json .Args}} {{json .Config.Cmd}} {{json .Config.Entrypoint}}' "$redis" |
    grep -qF "$redis_password"; then
    fail "the Redis password is on the Redis container's command line (docker inspect)"
fi
if docker top "$redis" -o pid,args | grep -qF "$redis_password"; then
    fail "the Redis password shows in ps"
fi
for service in preflight migrate db-roles worker flower; do
    for container in $(compose ps -a -q "$service"); do
        settings="$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.Config.User}}' "$container")"
        [[ "$settings" == 'true ["ALL"] ["no-new-privileges:true"] '* ]] ||
            fail "$service is not hardened (read-only root, cap_drop ALL, no-new-privileges): $settings"
    done
done
worker_uid="$(docker exec "$(compose ps -q worker | sed -n 1p)" id -u)"
[ "$worker_uid" != 0 ] || fail "a worker runs as root"
say "redis password on no command line; app services read-only, no capabilities, no-new-privileges; worker uid $worker_uid"

step "Flower: answers with its login, refuses without"
flower_code() {  # flower_code [USER:PASSWORD]: HTTP status of Flower's front page
    python3 - "$flower_port" "${1:-}" <<'EOF'
import base64, sys, urllib.error, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/")
if sys.argv[2]:
    request.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[2].encode()).decode())
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError:
    print("unreachable")
EOF
}
login="$(env_file_value FLOWER_USER):$(env_file_value FLOWER_PASSWORD)"
for _ in $(seq 1 30); do [ "$(flower_code "$login")" = 200 ] && break; sleep 2; done
[ "$(flower_code "$login")" = 200 ] || fail "Flower does not answer with its login: $(flower_code "$login")"
[ "$(flower_code)" = 401 ] || fail "Flower answers without a login: $(flower_code)"
[ "$(flower_code "$(env_file_value FLOWER_USER):wrong")" = 401 ] || fail "Flower takes a wrong password"
say "Flower: 200 with its login, 401 without and with a wrong one"

# --- 6. sweeps ------------------------------------------------------------------------------------

step "two synthetic BadNets (synth --quick, in a container of the image, started with the stack)"
wait "$synth_pid" || { tail -n 20 "$WORK/synth.log" >&2; fail "synth failed"; }
sed 's/^/    /' "$WORK/synth.log" | grep -v '^ *$' | tail -n 2

for name in model-1 model-2; do
    cat <<EOF
[[model]]
name = "$name"
path = "/data/$name/models/bd_weights.h5"
clean_valid = "/data/$name/data/cl/valid.h5"
clean_test = "/data/$name/data/cl/test.h5"
poisoned = { sunglasses = { valid = "/data/$name/data/bd/bd_valid.h5", test = "/data/$name/data/bd/bd_test.h5" } }

EOF
done >"$WORK/models.toml"
{
    echo 'thresholds = [0.02, 0.04, 0.10]'
    echo 'policy = "first"'
    echo 'prune_layer = "conv_3"'
    echo 'rank_layer = "pool_3"'
    echo 'range_size = 3'  # many short tasks: the second sweep is killed in the middle of one
    echo
    cat "$WORK/models.toml"
} >"$WORK/sweeps/stack-test.toml"
chmod -R a+rX "$WORK/sweeps"

orchestrator() {  # orchestrator ARG...: one badnet-prune command in a new orchestrator container
    compose run --rm --no-deps -T orchestrator "$@" 2>"$WORK/orchestrator.err" && return
    local status=$?
    echo "stack-test: \`orchestrator $*\` failed (exit $status):" >&2
    grep -v -e '^ *Container ' -e '^ *$' "$WORK/orchestrator.err" | tail -n 15 | sed 's/^/    /' >&2
    return "$status"
}
sql_value() {  # sql_value QUERY: the one value the query returns
    local rows
    rows="$(orchestrator sql --csv "$1")" || fail "sql failed: $1"
    tr -d '\r' <<<"$rows" | tail -n 1
}

check_sweep() {  # check_sweep ID: done, every model done, steps = channels + 1 each, none doubled
    local id="$1" report
    orchestrator status "$id" --json >"$WORK/status-$id.json" || fail "status $id failed"
    report="$(python3 - "$WORK/status-$id.json" <<'EOF'
import json, sys
progress = json.load(open(sys.argv[1]))
problems = [] if progress["status"] == "done" else [f"sweep status {progress['status']}"]
def steps(model):  # the prune_range stage's units: steps stored of planned
    return model["units"].get("prune_range") or [None, None]
for model in progress["models"]:
    stored, planned = steps(model)
    if model["status"] != "done" or planned is None or stored != planned:
        problems.append(f"{model['name']}: {model['status']}, {stored}/{planned} steps,"
                        f" tasks {model['tasks']}, error {model['error']}")
print("; ".join(problems) or f"{len(progress['models'])} models done: " + ", ".join(
    "{} {}/{} steps".format(m["name"], *steps(m)) for m in progress["models"]))
sys.exit(1 if problems else 0)
EOF
)" || fail "sweep $id: $report"
    local stored expected doubled
    stored="$(sql_value "SELECT count(*) FROM steps JOIN models ON models.id = steps.model_id WHERE models.sweep_id = $id")"
    expected="$(python3 -c 'import json, sys; print(sum(m["units"]["prune_range"][1] for m in json.load(open(sys.argv[1]))["models"]))' \
        "$WORK/status-$id.json")"
    doubled="$(sql_value "SELECT count(*) FROM (SELECT model_id, step FROM steps GROUP BY model_id, step HAVING count(*) > 1) AS doubled")"
    [ "$stored" = "$expected" ] || fail "sweep $id: sql counts $stored steps, status expects $expected"
    [ "$doubled" = 0 ] || fail "sweep $id: $doubled (model, step) pairs stored more than once"
    say "sweep $id: $report; sql: $stored steps, none doubled"
}

step "sweep 1 (orchestrator sweep --wait)"
first="$(timed_compose 600 run --rm -T orchestrator sweep /sweeps/stack-test.toml --wait 2>"$WORK/sweep-1.log" |
    tail -n 1)" || { tail -n 20 "$WORK/sweep-1.log" >&2; fail "the sweep failed"; }
[[ "$first" =~ ^[0-9]+$ ]] || { tail -n 20 "$WORK/sweep-1.log" >&2; fail "sweep printed no id: $first"; }
check_sweep "$first"

step "report of sweep 1"
orchestrator report "$first" --out /reports/stack-test >/dev/null || fail "report failed"
compose run --rm --no-deps -T --entrypoint sh orchestrator -c 'test -s /reports/stack-test/report.md' ||
    fail "report.md is missing or empty"
say "report written: /reports/stack-test/report.md"

step "sweep 2, one worker killed mid-way"
timed_compose 300 run --rm -T orchestrator sweep /sweeps/stack-test.toml --wait >"$WORK/sweep-2.out" \
    2>"$WORK/sweep-2.log" &
sweep_pid=$!
second=""
killed=""
# Polled with psql in the PostgreSQL container (a tenth of a second, where an orchestrator container takes
# seconds): the sweep's tasks are short, and the worker must die while one of them runs.
psql_value() { docker exec "$(container_of postgres)" psql -U "$(env_file_value POSTGRES_USER)" \
    -d "$(env_file_value POSTGRES_DB)" -tAc "$1" 2>/dev/null; }
deadline=$((SECONDS + 300))
while [ -z "$killed" ] && [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$sweep_pid" 2>/dev/null || break
    latest="$(psql_value "SELECT max(id) FROM sweeps" || true)"
    if [[ "$latest" =~ ^[0-9]+$ ]] && [ "$latest" -gt "$first" ]; then
        second="$latest"
        running="$(psql_value "SELECT count(*) FROM tasks WHERE sweep_id = $second AND state = 'running'" || true)"
        if [[ "$running" =~ ^[0-9]+$ ]] && [ "$running" -gt 0 ]; then
            killed="$(compose ps -q worker | sed -n 1p)"
            docker kill "$killed" >/dev/null
            say "sweep $second: $running task(s) running; killed worker $(docker inspect -f '{{.Name}}' "$killed")"
        fi
    fi
    sleep 0.2
done
[ -n "$killed" ] || fail "sweep 2 never had a running task to interrupt (it may have finished first)"
wait "$sweep_pid" || { tail -n 20 "$WORK/sweep-2.log" >&2; fail "sweep 2 failed after a worker was killed"; }
[ "$(tail -n 1 "$WORK/sweep-2.out")" = "$second" ] || fail "sweep 2 printed $(tail -n 1 "$WORK/sweep-2.out"), not $second"
check_sweep "$second"

step "stop, then up: every result kept"
cp "$WORK/status-$first.json" "$WORK/before-$first.json"
cp "$WORK/status-$second.json" "$WORK/before-$second.json"
compose stop --timeout 30 >/dev/null 2>&1
[ -z "$(compose ps -q --status running)" ] || fail "containers still running after stop"
compose up -d --no-build --pull never --scale worker=2 >/dev/null 2>&1 || fail "up after stop failed"
wait_for_stack 240
for id in "$first" "$second"; do
    check_sweep "$id"
    python3 - "$WORK/before-$id.json" "$WORK/status-$id.json" <<'EOF' || fail "sweep $id changed across stop and up"
import json, sys
before, after = (json.load(open(path)) for path in sys.argv[1:])  # as objects: key order aside
if before != after:
    print(f"before stop: {before}\nafter up:    {after}", file=sys.stderr)
    sys.exit(1)
EOF
done

# --- 7. down ---------------------------------------------------------------------------------------

step "--profile orchestrator down -v"
compose --profile orchestrator down -v --remove-orphans --timeout 30 >/dev/null 2>&1
left="$(docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$left" ] || fail "containers left after down -v: $left"
volumes="$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$volumes" ] || fail "volumes left after down -v: $volumes"
say "nothing left running, no volume left"
