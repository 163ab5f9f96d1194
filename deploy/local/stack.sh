#!/usr/bin/env bash
# The compose stack on this machine, from our own Dockerfiles and docker-compose.yml:
#
#   deploy/local/stack.sh up        # make deploy-up
#   deploy/local/stack.sh down      # make deploy-down
#   deploy/local/stack.sh compose ARGS  # docker-compose on the stack that is up
#   deploy/local/stack.sh standins  # only the stand-in base images
#   deploy/local/stack.sh train-image   # deploy/Dockerfile.train on a CPU torch stand-in
#   deploy/local/stack.sh env       # the settings the other commands use, as shell lines
#
# `up` starts a Docker daemon when none answers (overlay2 storage, or vfs where overlay2
# does not start; its own data root; logs in .deploy/dockerd.log), builds the stand-in
# base images when missing (standins/: Debian-built images under the upstream names our
# files use, since no registry is reachable), builds our images, builds the demo's small
# bundle and index unless CNCLIP_MODELS_DIR and CNCLIP_INDEXES_DIR name others, and brings
# the stack up with 2 API replicas behind the gateway on 127.0.0.1:${CNCLIP_PORT:-8000}.
# It returns when every replica is healthy and /readyz through the gateway answers 200,
# or fails with the logs of what did not start. `down` removes the containers, networks
# and volumes of the stack and stops the daemon that `up` started, and only that one.
# Images stay, as the cache of the next `up`; an image replaced by a rebuild is removed.
#
# Settings (environment): CNCLIP_PORT (8000), PROMETHEUS_PORT (9090), CNCLIP_REPLICAS (2),
# COMPOSE_PROJECT_NAME (cnclip), CNCLIP_DOCKER_ROOT (/var/lib/cnclip-docker: the data root
# of a daemon started here), CNCLIP_DOCKER_STORAGE (auto: overlay2, else vfs; or a driver
# name), CNCLIP_BUILD_CA (/etc/ssl/certs/ca-certificates.crt: CA certificates pip trusts
# in the image builds, see deploy/pip/README.md; empty: none), CNCLIP_DEBIAN_MIRROR
# (http://deb.debian.org/debian), CNCLIP_DEPLOY_TIMEOUT_S (300).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/deploy/local"
STATE="$ROOT/.deploy"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-cnclip}"
export CNCLIP_PORT="${CNCLIP_PORT:-8000}"
export PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
export CNCLIP_REPLICAS="${CNCLIP_REPLICAS:-2}"
export CNCLIP_PUBLISH_HOST=127.0.0.1
DOCKER_ROOT="${CNCLIP_DOCKER_ROOT:-/var/lib/cnclip-docker}"
STORAGE="${CNCLIP_DOCKER_STORAGE:-auto}"
BUILD_CA="${CNCLIP_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}"
MIRROR="${CNCLIP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TIMEOUT_S="${CNCLIP_DEPLOY_TIMEOUT_S:-300}"
BASE=cnclip-standin/debian:bookworm
# stand-in Dockerfile -> the upstream name our Dockerfiles and docker-compose.yml use
STANDINS=(
    "python.Dockerfile python:3.11-slim-bookworm"
    "nginx.Dockerfile nginx:1.27-alpine"
    "redis.Dockerfile redis:7-alpine"
    "prometheus.Dockerfile prom/prometheus:v2.53.0"
)

say() { echo "deploy: $*" >&2; }
die() { echo "deploy: error: $*" >&2; exit 1; }

compose() {
    docker-compose --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" \
        -f "$HERE/compose.local.yml" "$@"
}

require() {
    local missing=()
    for tool in docker dockerd docker-compose debootstrap curl; do
        command -v "$tool" > /dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        die "missing ${missing[*]}: run 'make install' (scripts/system-deps.sh installs" \
            "Debian's docker.io, docker-compose, debootstrap and curl), or" \
            "'apt-get install docker.io docker-compose debootstrap curl'"
    fi
}

# --- the daemon -------------------------------------------------------------------------

daemon_answers() { docker info > /dev/null 2>&1; }

start_daemon() {
    if daemon_answers; then
        say "using the Docker daemon that is running ($(docker info -f '{{.DockerRootDir}}' 2>/dev/null))"
        return
    fi
    if [ -n "${DOCKER_HOST:-}" ]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to let this script start a daemon"
    fi
    [ "$(id -u)" -eq 0 ] || die "no Docker daemon answers, and starting one needs root"
    mkdir -p "$STATE" "$DOCKER_ROOT"
    local driver drivers
    case "$STORAGE" in
        auto) drivers="overlay2 vfs" ;;
        *) drivers="$STORAGE" ;;
    esac
    for driver in $drivers; do
        say "starting dockerd ($driver storage, data root $DOCKER_ROOT, log $STATE/dockerd.log)"
        setsid dockerd --storage-driver "$driver" --data-root "$DOCKER_ROOT" \
            --exec-root /var/run/cnclip-docker --pidfile /var/run/cnclip-docker.pid \
            >> "$STATE/dockerd.log" 2>&1 < /dev/null &
        echo $! > "$STATE/dockerd.pid"
        for _ in $(seq 60); do
            if daemon_answers; then
                return
            fi
            kill -0 "$(cat "$STATE/dockerd.pid")" 2> /dev/null || break
            sleep 1
        done
        stop_daemon
        say "dockerd did not start with $driver storage"
    done
    tail -n 20 "$STATE/dockerd.log" >&2 || true
    die "dockerd did not start (its log is above and in $STATE/dockerd.log)"
}

stop_daemon() {
    local pidfile="$STATE/dockerd.pid"
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = dockerd ]; then
        say "stopping the dockerd this script started (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 30); do
            kill -0 "$pid" 2> /dev/null || break
            sleep 1
        done
    fi
    rm -f "$pidfile"
}

# --- stand-in base images -----------------------------------------------------------------

label_of() {  # image label -> its value, or nothing (also when the image is missing)
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2> /dev/null || true
}

BASE_RECIPE=2  # raise when build_base changes: the base and every stand-in are rebuilt

build_base() {
    if [ "$(label_of "$BASE" org.cnclip.standin)" = "base-$BASE_RECIPE" ]; then
        return
    fi
    say "building $BASE with debootstrap (about a minute) ..."
    local rootfs
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/cnclip-rootfs.XXXXXX")
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$rootfs.log" 2>&1; then
        tail -n 20 "$rootfs.log" >&2
        rm -rf "$rootfs" "$rootfs.log"
        die "debootstrap failed (log above; CNCLIP_DEBIAN_MIRROR picks another mirror)"
    fi
    rm -f "$rootfs.log"
    # no service starts inside a build, as in Debian's own images
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    chmod 755 "$rootfs"  # mktemp's 0700 would become the image's / and lock out non-root users
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' \
        -c "LABEL org.cnclip.standin=base-$BASE_RECIPE" - "$BASE" > /dev/null
    rm -rf "$rootfs"
}

standin_needed() {  # FILE NAME -> prints the recipe's hash when NAME must be (re)built
    local file=$1 name=$2 sha current
    # the recipe and the base it starts from
    sha=$({ cat "$HERE/standins/$file"; docker image inspect -f '{{.Id}}' "$BASE"; } \
        | sha256sum | cut -c1-16)
    current=$(label_of "$name" org.cnclip.standin)
    if docker image inspect "$name" > /dev/null 2>&1 && [ -z "$current" ]; then
        say "$name is a real image here (not a stand-in); using it"
    elif [ "$current" != "$sha" ]; then
        echo "$sha"
    fi
}

build_standin() {  # FILE NAME SHA CONTEXT: one stand-in, its log in .deploy/logs
    local file=$1 name=$2 sha=$3 context=$4
    say "building the stand-in for $name ($file) ..."
    DOCKER_BUILDKIT=0 docker build -q --force-rm --label "org.cnclip.standin=$sha" \
        -t "$name" -f "$HERE/standins/$file" "$context" > "$STATE/logs/standin-$file.log" 2>&1
}

build_standins() {  # the four of the stack, side by side
    build_base
    mkdir -p "$STATE/logs"
    local pids=() names=() replaced=() entry file name sha
    for entry in "${STANDINS[@]}"; do
        read -r file name <<< "$entry"
        sha=$(standin_needed "$file" "$name")
        [ -n "$sha" ] || continue
        replaced+=("$(image_id "$name")")
        build_standin "$file" "$name" "$sha" "$HERE/standins" &
        pids+=($!)
        names+=("$file")
    done
    local i failed=0
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            tail -n 30 "$STATE/logs/standin-${names[$i]}.log" >&2
            say "the stand-in ${names[$i]} did not build (log above)"
            failed=1
        fi
    done
    [ "$failed" -eq 0 ] || die "stand-in images failed to build"
    remove_replaced "${replaced[@]}"
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2> /dev/null || true; }

remove_replaced() {  # image ids that a rebuild left without a name (vfs keeps full copies)
    local id
    for id in "$@"; do
        if [ -n "$id" ] && [ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2> /dev/null)" = 0 ]; then
            docker rmi "$id" > /dev/null 2>&1 || true
        fi
    done
}

# --- what the stack serves --------------------------------------------------------------

DEMO_PID=""

start_demo_build() {  # in the background, while the images build
    local demo="$STATE/demo"
    if [ -n "${CNCLIP_MODELS_DIR:-}${CNCLIP_INDEXES_DIR:-}" ] \
        || { [ -f "$demo/bundle/manifest.json" ] && [ -f "$demo/index/CURRENT" ]; }; then
        return
    fi
    [ -x "$PYTHON" ] || die "$PYTHON is missing: run 'make install' first (the demo build trains with torch)"
    say "building the demo's small bundle and index in $demo (about two minutes, beside the images) ..."
    rm -rf "$demo"
    mkdir -p "$STATE/logs"
    "$PYTHON" -m cnclip demo --scale small --no-serve --work "$demo" > "$STATE/logs/demo.log" 2>&1 &
    DEMO_PID=$!
}

prepare_data() {
    if [ -n "${CNCLIP_MODELS_DIR:-}" ] || [ -n "${CNCLIP_INDEXES_DIR:-}" ]; then
        [ -n "${CNCLIP_MODELS_DIR:-}" ] && [ -n "${CNCLIP_INDEXES_DIR:-}" ] \
            || die "set both CNCLIP_MODELS_DIR and CNCLIP_INDEXES_DIR, or neither (the demo's build)"
        say "serving $CNCLIP_MODELS_DIR/${CNCLIP_BUNDLE_NAME:-bundle} and $CNCLIP_INDEXES_DIR/${CNCLIP_INDEX_NAME:-catalog}"
        return
    fi
    local demo="$STATE/demo"
    if [ -n "$DEMO_PID" ]; then
        if ! wait "$DEMO_PID"; then
            tail -n 30 "$STATE/logs/demo.log" >&2
            die "the demo build failed (log above, all of it in $STATE/logs/demo.log)"
        fi
        say "the demo's bundle and index are built"
    fi
    # A fresh copy of the demo's index every time: catalog changes of an earlier run are
    # not carried over. The API runs as uid 10001 and writes new versions into it.
    rm -rf "$STATE/models" "$STATE/indexes"
    mkdir -p "$STATE/models" "$STATE/indexes"
    cp -r "$demo/bundle" "$STATE/models/bundle"
    cp -r "$demo/index" "$STATE/indexes/catalog"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R 10001:10001 "$STATE/indexes"
    else
        chmod -R a+rwX "$STATE/indexes"
    fi
    export CNCLIP_MODELS_DIR="$STATE/models" CNCLIP_INDEXES_DIR="$STATE/indexes"
    export CNCLIP_BUNDLE_NAME=bundle CNCLIP_INDEX_NAME=catalog
}

save_settings() {  # what later commands (compose, down) need to address the same stack
    local name
    : > "$STATE/stack.env"
    for name in COMPOSE_PROJECT_NAME CNCLIP_PORT PROMETHEUS_PORT CNCLIP_REPLICAS \
        CNCLIP_PUBLISH_HOST CNCLIP_MODELS_DIR CNCLIP_INDEXES_DIR CNCLIP_BUNDLE_NAME \
        CNCLIP_INDEX_NAME; do
        printf 'export %s=%q\n' "$name" "${!name:-}" >> "$STATE/stack.env"
    done
}

# --- the trainer's image -----------------------------------------------------------------

TORCH_IMAGE=pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime

copy_build_ca() {
    rm -f "$ROOT/deploy/pip/ca-certificates.crt"
    if [ -n "$BUILD_CA" ]; then
        [ -s "$BUILD_CA" ] || die "CNCLIP_BUILD_CA=$BUILD_CA is not a file (empty: build without one)"
        cp "$BUILD_CA" "$ROOT/deploy/pip/ca-certificates.crt"
    fi
}

train_image() {  # deploy/Dockerfile.train on a CPU stand-in, then the demo's pipeline in it
    require
    local start=$SECONDS
    start_daemon
    build_base
    mkdir -p "$STATE/logs"
    local sha
    sha=$(standin_needed pytorch.Dockerfile "$TORCH_IMAGE")
    if [ -n "$sha" ]; then
        [ -x "$PYTHON" ] || die "$PYTHON is missing: run 'make install' first"
        local context="$STATE/pytorch-standin" old
        rm -rf "$context"
        mkdir -p "$context/wheels"
        # torch's CPU build: on these machines pip finds it on disk; elsewhere give pip a
        # folder that holds it (PIP_FIND_LINKS), or it takes PyPI's CUDA build
        "$PYTHON" -m pip download --quiet --only-binary=:all: -d "$context/wheels" torch==2.13.0 \
            || die "pip could not download torch 2.13.0 and what it needs (above)"
        old=$(image_id "$TORCH_IMAGE")
        build_standin pytorch.Dockerfile "$TORCH_IMAGE" "$sha" "$context" \
            || { tail -n 30 "$STATE/logs/standin-pytorch.Dockerfile.log" >&2; die "the torch stand-in did not build"; }
        remove_replaced "$old"
        rm -rf "$context"
    fi
    copy_build_ca
    say "building cnclip-train from deploy/Dockerfile.train ..."
    local built=$SECONDS old_train
    old_train=$(image_id cnclip-train:latest)
    DOCKER_BUILDKIT=0 docker build --force-rm -f "$ROOT/deploy/Dockerfile.train" \
        -t cnclip-train:latest "$ROOT" > "$STATE/logs/build-train.log" 2>&1 \
        || { tail -n 40 "$STATE/logs/build-train.log" >&2; die "the trainer's image did not build (log above)"; }
    rm -f "$ROOT/deploy/pip/ca-certificates.crt"
    remove_replaced "$old_train"
    say "cnclip-train built in $((SECONDS - built)) s ($(docker image inspect -f '{{.Size}}' cnclip-train:latest | awk '{printf "%d MB", $1 / 1e6}'))"
    say "running the demo's pipeline in it (train, export, index; CPU) ..."
    local ran=$SECONDS
    docker run --rm --network none cnclip-train:latest \
        cnclip demo --scale small --no-serve --work /work/demo \
        || die "the demo's pipeline failed in cnclip-train (above)"
    say "trained, exported and indexed in the trainer's image in $((SECONDS - ran)) s; all in $((SECONDS - start)) s"
}

# --- up and down -------------------------------------------------------------------------

api_health() {  # one line per API container: "<id> <restarts> <health>"
    local id
    for id in $(compose ps -q api); do
        echo "$id $(docker inspect -f '{{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
    done
}

show_failures() {
    compose ps >&2 || true
    local id state
    for id in $(compose ps -q); do
        state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
        case "$state" in
            *" running healthy" | *" running ") continue ;;
        esac
        echo "----- $state: the last lines of its log" >&2
        docker logs --tail 40 "$id" >&2 || true
    done
}

wait_ready() {
    local deadline=$((SECONDS + TIMEOUT_S)) url="http://127.0.0.1:$CNCLIP_PORT/readyz"
    while [ $SECONDS -lt $deadline ]; do
        local health healthy
        health=$(api_health)
        healthy=$(grep -c " healthy$" <<< "$health" || true)
        # a replica that turned unhealthy, stopped, or restarted (it exited and its restart
        # policy started it again) will not come right by waiting
        if grep -q " unhealthy$\| exited$\| dead$\| [1-9][0-9]* [a-z]*$" <<< "$health"; then
            show_failures
            die "an API replica failed (its log is above)"
        fi
        if [ "$healthy" -ge "$CNCLIP_REPLICAS" ] && curl -fsS -o /dev/null "$url" 2> /dev/null; then
            return
        fi
        sleep 2
    done
    show_failures
    die "the stack was not ready within ${TIMEOUT_S} s (CNCLIP_DEPLOY_TIMEOUT_S): logs above"
}

up() {
    require
    local start=$SECONDS
    rm -f "$STATE/report.json"  # the figures of make test-deploy's last run
    start_daemon
    start_demo_build
    build_standins
    [ -f "$ROOT/.env" ] || { cp "$ROOT/.env.example" "$ROOT/.env"; say "wrote .env from .env.example"; }
    copy_build_ca
    say "building the images (docker-compose build) ..."
    local built=$SECONDS old_serve
    old_serve=$(image_id cnclip-serve:latest)
    mkdir -p "$STATE/logs"
    COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0 compose build --force-rm > "$STATE/logs/build.log" 2>&1 \
        || { tail -n 40 "$STATE/logs/build.log" >&2; die "the images did not build (log above, all of it in $STATE/logs/build.log)"; }
    say "images built in $((SECONDS - built)) s"
    remove_replaced "$old_serve"
    prepare_data
    save_settings
    compose up -d --remove-orphans > "$STATE/logs/up.log" 2>&1 \
        || { cat "$STATE/logs/up.log" >&2; show_failures; die "docker-compose up failed (above)"; }
    wait_ready
    say "ready in $((SECONDS - start)) s: http://127.0.0.1:$CNCLIP_PORT (Prometheus: http://127.0.0.1:$PROMETHEUS_PORT)"
}

down() {
    require
    if daemon_answers; then
        compose --profile grafana down --volumes --remove-orphans --timeout 10 > /dev/null 2>&1 \
            || compose --profile grafana down --volumes --remove-orphans --timeout 10
        local label="label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" left
        left=$(docker ps -aq --filter "$label"; docker network ls -q --filter "$label"; \
            docker volume ls -q --filter "$label")
        [ -z "$left" ] || die "left behind by docker-compose down: $(echo $left)"
        say "nothing of the stack is left (containers, networks, volumes)"
    fi
    rm -f "$ROOT/deploy/pip/ca-certificates.crt" "$STATE/stack.env"
    stop_daemon
    say "down"
}

if [ "${1:-}" != up ] && [ -f "$STATE/stack.env" ]; then
    # shellcheck disable=SC1091
    . "$STATE/stack.env"
fi

case "${1:-}" in
    up) up ;;
    down) down ;;
    compose) shift; require; compose "$@" ;;
    train-image) train_image ;;
    standins) require; start_daemon; build_standins ;;
    env)
        echo "COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME"
        echo "CNCLIP_PORT=$CNCLIP_PORT"
        echo "PROMETHEUS_PORT=$PROMETHEUS_PORT"
        echo "CNCLIP_REPLICAS=$CNCLIP_REPLICAS"
        echo "CNCLIP_DOCKERD_PID=$(cat "$STATE/dockerd.pid" 2> /dev/null || true)"
        ;;
    *) die "usage: deploy/local/stack.sh up|down|compose ARGS|standins|train-image|env" ;;
esac
