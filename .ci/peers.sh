#!/usr/bin/env bash
# Start / stop the real peers the test suite uses. Idempotent; quiet on success.
#   bash .ci/peers.sh start|stop              PostgreSQL + Slurm (+ the OpenSSH programs, Chromium)
#   bash .ci/peers.sh slurm-start|slurm-stop  only the Slurm cluster (and its slurmrestd)
#   bash .ci/peers.sh chromium                only Chromium (installed if it is missing)
#   bash .ci/peers.sh haproxy                 only HAProxy (installed if it is missing)
# PostgreSQL: the machine's own server on 127.0.0.1:5432 (started if it is down,
# installed if it is missing). It is left running on stop: it is the machine's.
# Slurm: a one-node cluster (munged, slurmctld, slurmd) that lives entirely in
# $LABLINK_SLURM_DIR (default /tmp/lablink-slurm); clients use
# SLURM_CONF=$LABLINK_SLURM_DIR/slurm.conf. Stop ends the jobs and the daemons,
# removes state, spool and pid files, and keeps slurm.conf and log/ for debugging.
# slurmrestd: Slurm's REST API on 127.0.0.1:$LABLINK_SLURMRESTD_PORT (6820), with JWT
# authentication from the cluster's key $LABLINK_SLURM_DIR/jwt_hs256.key; jobs run
# as the Unix users lablink-alice and lablink-bob, made here for the tests.
# OpenSSH: start only makes sure sshd, ssh and ssh-keygen are installed; the tests
# (tests/helpers/sshd.py) run their own sshd on 127.0.0.1, one per test.
# Chromium: start only makes sure Debian's chromium is installed; the browser tests
# (tests/plugins/browser.py) launch it through Playwright (never `playwright install`).
# HAProxy: start only makes sure Debian's haproxy is installed; the replicas tests
# (tests/helpers/replicas.py) run their own, in the foreground, one per test module.
set -euo pipefail

apt_ready=""
# apt-get's output (debconf's notes too) only when it fails
apt_install() {
  local out
  if [ -z "$apt_ready" ]; then
    apt-get update -qq >/dev/null
    apt_ready=1
  fi
  out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" 2>&1) || {
    echo "$out" | tail -n 20 >&2
    return 1
  }
}

postgres_start() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "peers: installing PostgreSQL"
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "peers: no PostgreSQL cluster found" >&2
    return 1
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 0.2
  done
  echo "peers: PostgreSQL did not come up on 127.0.0.1:5432" >&2
  return 1
}

# -- OpenSSH: the programs only; every test starts its own sshd -------------------
openssh_install() {
  if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 \
    && command -v ssh-keygen >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then
    return 0
  fi
  # iproute2: the tunnel's topology test puts login and compute nodes in network namespaces
  echo "peers: installing OpenSSH (server and client) and iproute2"
  apt_install openssh-server openssh-client iproute2 || return 1
  [ -x /usr/sbin/sshd ] || { echo "peers: /usr/sbin/sshd is missing after the install" >&2; return 1; }
}

# -- Chromium: Debian's, for the tests that drive pages through Playwright -------------
chromium_install() {
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  echo "peers: installing Chromium"
  apt_install chromium || return 1
  [ -x /usr/bin/chromium ] || { echo "peers: /usr/bin/chromium is missing after the install" >&2; return 1; }
}

# -- HAProxy: Debian's, the load balancer the replicas tests put in front of backends --
haproxy_install() {
  if command -v haproxy >/dev/null 2>&1; then
    return 0
  fi
  echo "peers: installing HAProxy"
  apt_install haproxy || return 1
  command -v haproxy >/dev/null 2>&1 || { echo "peers: haproxy is missing after the install" >&2; return 1; }
}

# -- Slurm: a one-node cluster for the tests ---------------------------------------
# Everything lives in $SLURM_DIR: slurm.conf, gres.conf, munge/ (key, socket, seed),
# state/, spool/, run/ (pid files), log/ (the previous run's logs as *.prev) and
# dev/ (fake GPU device files).
# The daemons run in the foreground (munged -F, slurmctld -D, slurmd -D), each in
# its own session (setsid) with all output in log/, so nothing waits on them;
# run/<daemon>.pid holds the pid that slurm_stop ends.

SLURM_DIR="${LABLINK_SLURM_DIR:-/tmp/lablink-slurm}"
SLURM_CTLD_PORT="${LABLINK_SLURM_CTLD_PORT:-6817}"
SLURM_SLURMD_PORT="${LABLINK_SLURM_SLURMD_PORT:-6818}"
SLURMRESTD_PORT="${LABLINK_SLURMRESTD_PORT:-6820}"
SLURM_TEST_USERS="lablink-alice lablink-bob"

slurm_cmd() {
  SLURM_CONF="$SLURM_DIR/slurm.conf" timeout 10 "$@"
}

# Process $1 exists and is not a zombie (the init of some machines reaps late).
slurm_alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$stat" ] && [ "${stat#Z}" = "$stat" ]
}

# The pid of one of our daemons (munged, slurmctld, slurmd) if it is alive.
slurm_pid() {
  local file="$SLURM_DIR/run/$1.pid" pid=""
  [ -s "$file" ] || return 1
  read -r pid <"$file" || true
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  slurm_alive "$pid" || return 1
  echo "$pid"
}

# All three daemons are ours and alive, and the node takes jobs (idle, mixed,
# allocated, completing: not down, drained or not responding).
slurm_running() {
  local daemon state
  for daemon in munged slurmctld slurmd slurmrestd; do
    slurm_pid "$daemon" >/dev/null || return 1
  done
  grep -q '^AuthAltTypes=auth/jwt' "$SLURM_DIR/slurm.conf" 2>/dev/null || return 1
  state=$(slurm_cmd sinfo -h -n localhost -o %T 2>/dev/null | head -n 1) || return 1
  case "$state" in
    "" | *down* | *drain* | *fail* | *unknown* | *"*"* | *not_responding*) return 1 ;;
    *) return 0 ;;
  esac
}

# The daemons' output: log/<daemon>.out has everything, from the first line on
# (slurmctld.log and slurmd.log have the same with timestamps).
slurm_logs() {
  local log
  for log in "$SLURM_DIR"/log/*.out; do
    [ -s "$log" ] || continue
    echo "---- $log (last lines)" >&2
    tail -n 15 "$log" >&2
  done
}

slurm_write_config() {
  local d="$SLURM_DIR"
  cat >"$d/slurm.conf" <<EOF
# Written by .ci/peers.sh: a one-node Slurm cluster for the Lablink tests.
ClusterName=lablink
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$SLURM_CTLD_PORT
SlurmdPort=$SLURM_SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.socket.2
# slurmrestd's callers authenticate with JWTs signed with this key
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$d/jwt_hs256.key
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/run/slurmctld.pid
SlurmdPidFile=$d/run/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Start a submitted job at once (well under a second) rather than batching.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# Reject at submission what a partition cannot run (as sites do), not queue it forever.
EnforcePartLimits=ALL
SelectType=select/cons_tres
# CPUs only: memory is not a consumable resource, so jobs need no --mem.
SelectTypeParameters=CR_CPU
# The node announces the CPUs below even though the machine has fewer, so that
# several one-CPU jobs run side by side.
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
InactiveLimit=0
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=batch Nodes=localhost Default=YES MaxTime=08:00:00 State=UP
PartitionName=devel Nodes=localhost MaxTime=02:00:00 State=UP
EOF
  cat >"$d/gres.conf" <<EOF
# Two fake GPUs (device files like /dev/null): --gres=gpu:N is scheduled and
# jobs get CUDA_VISIBLE_DEVICES.
AutoDetect=off
NodeName=localhost Name=gpu File=$d/dev/gpu[0-1]
EOF
}

slurm_start() {
  local d="$SLURM_DIR" conf="$SLURM_DIR/slurm.conf" daemon gpu log state deadline
  if slurm_running; then
    return 0
  fi
  slurm_stop >/dev/null 2>&1 || true # stale pid files or half a cluster
  if ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    echo "peers: installing Slurm"
    apt_install slurm-wlm munge || return 1
  fi
  if ! command -v slurmrestd >/dev/null 2>&1; then
    echo "peers: installing slurmrestd"
    apt_install slurmrestd || return 1
  fi
  mkdir -p "$d"/{munge,state,spool,run,log,dev} || return 1
  # munged wants its socket directory (and everything above it) safe but reachable.
  chmod 755 "$d" "$d/munge" || return 1
  # Fake GPUs: character devices like /dev/null (slurmd wants device files; plain
  # files also work, with an error in its log, where mknod is not allowed).
  for gpu in gpu0 gpu1; do
    [ -c "$d/dev/$gpu" ] && continue
    rm -f "$d/dev/$gpu"
    mknod -m 666 "$d/dev/$gpu" c 1 3 2>/dev/null || touch "$d/dev/$gpu"
  done
  if [ ! -s "$d/jwt_hs256.key" ]; then
    dd if=/dev/urandom of="$d/jwt_hs256.key" bs=32 count=1 status=none || return 1
  fi
  chmod 600 "$d/jwt_hs256.key" || return 1
  slurm_users || return 1
  if [ ! -s "$d/munge/munge.key" ]; then
    dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none || return 1
  fi
  chmod 400 "$d/munge/munge.key" || return 1
  slurm_write_config || return 1
  for log in "$d"/log/*.log "$d"/log/*.out; do
    if [ -e "$log" ]; then mv -f "$log" "$log.prev"; fi
  done

  setsid munged -F --force --key-file="$d/munge/munge.key" \
    --socket="$d/munge/munge.socket.2" --pid-file="$d/run/munged.pid" \
    --seed-file="$d/munge/munged.seed" \
    </dev/null >>"$d/log/munged.out" 2>&1 &
  echo $! >"$d/run/munged.pid"
  for _ in $(seq 1 50); do
    [ -S "$d/munge/munge.socket.2" ] && break
    sleep 0.1
  done
  SLURM_CONF="$conf" setsid slurmctld -D -c \
    </dev/null >>"$d/log/slurmctld.out" 2>&1 &
  echo $! >"$d/run/slurmctld.pid"
  SLURM_CONF="$conf" setsid slurmd -D -N localhost \
    </dev/null >>"$d/log/slurmd.out" 2>&1 &
  echo $! >"$d/run/slurmd.pid"

  deadline=$((SECONDS + 20))
  state=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(slurm_cmd sinfo -h -n localhost -o %T 2>/dev/null | head -n 1) || state=""
    [ "$state" = "idle" ] && break
    for daemon in munged slurmctld slurmd; do
      slurm_pid "$daemon" >/dev/null || { state="($daemon exited)"; break 2; }
    done
    sleep 0.1
  done
  if [ "$state" != "idle" ]; then
    echo "peers: Slurm did not come up (node state: ${state:-no answer})" >&2
    slurm_logs
    slurm_stop
    return 1
  fi
  # A batch job must run to the end: the controller's scheduler only starts
  # working 2-3 s after it came up, and the tests want it ready.
  if ! slurm_probe "$deadline"; then
    echo "peers: Slurm is up but a trivial batch job did not run" >&2
    slurm_logs
    slurm_stop
    return 1
  fi
  slurmrestd_start || { slurm_logs; slurm_stop; return 1; }
}

# The HTTP status of a GET of $1 (nothing when nothing answers).
http_status() {
  python3 - "$1" <<'PY' 2>/dev/null || true
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as err:
    print(err.code)
PY
}

# The Unix users the tests' Slurm jobs run as (slurmrestd acts for them with JWTs).
slurm_users() {
  local user
  for user in $SLURM_TEST_USERS; do
    id -u "$user" >/dev/null 2>&1 && continue
    useradd --create-home --shell /bin/bash "$user" || return 1
  done
}

# slurmrestd as its own unprivileged user (it refuses to run as root), with JWT
# authentication only: every request names its user and carries a token signed
# with the cluster's key. SLURM_JWT=daemon: it authenticates to slurmctld itself.
slurmrestd_start() {
  local d="$SLURM_DIR" code=""
  SLURM_CONF="$d/slurm.conf" SLURM_JWT=daemon setsid slurmrestd -u nobody -g nogroup \
    -a rest_auth/jwt -s openapi/v0.0.38 "127.0.0.1:$SLURMRESTD_PORT" \
    </dev/null >>"$d/log/slurmrestd.out" 2>&1 &
  echo $! >"$d/run/slurmrestd.pid"
  for _ in $(seq 1 100); do
    # no user header: 401 once it answers
    code=$(http_status "http://127.0.0.1:$SLURMRESTD_PORT/openapi/v3")
    [ "$code" = "200" ] || [ "$code" = "401" ] && return 0
    slurm_pid slurmrestd >/dev/null || break
    sleep 0.1
  done
  echo "peers: slurmrestd did not answer on 127.0.0.1:$SLURMRESTD_PORT (last: ${code:-nothing})" >&2
  return 1
}

# Submit `true` as a batch job and wait (until SECONDS reaches $1) for it to complete.
slurm_probe() {
  local job state=""
  job=$(slurm_cmd sbatch --parsable --job-name=peers-probe --time=1 --output=/dev/null \
    --wrap true 2>&1) || { echo "$job" >&2; return 1; }
  while [ "$SECONDS" -lt "$1" ]; do
    state=$(slurm_cmd scontrol -o show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*') || state=""
    case "$state" in
      JobState=COMPLETED) return 0 ;;
      JobState=PENDING | JobState=CONFIGURING | JobState=RUNNING | JobState=COMPLETING | "") ;;
      *) echo "peers: probe job $job: $state" >&2; return 1 ;;
    esac
    sleep 0.1
  done
  echo "peers: probe job $job: still ${state:-unknown} after the deadline" >&2
  slurm_cmd scancel "$job" 2>/dev/null || true
  return 1
}

# The pids of all descendants of process $1.
slurm_descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      for (pid in parent) {
        p = parent[pid]
        while (p > 1) { if (p == root) { print pid; break } p = parent[p] }
      }
    }'
}

slurm_stop() {
  local d="$SLURM_DIR" daemon pid jobs leftovers alive
  local -a pids=()
  if slurm_pid slurmctld >/dev/null; then
    jobs=$(slurm_cmd squeue -h -o %A 2>/dev/null) || jobs=""
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086 # one job id per word
      slurm_cmd scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 80); do # KillWait=5 for jobs that ignore SIGTERM
        [ -z "$(slurm_cmd squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  for daemon in slurmrestd slurmd slurmctld munged; do
    pid=$(slurm_pid "$daemon") || continue
    pids+=("$pid")
    kill -TERM "$pid" 2>/dev/null || true
  done
  # They end within a second; SIGKILL after 10 s.
  for _ in $(seq 1 100); do
    alive=""
    for pid in "${pids[@]}"; do
      if slurm_alive "$pid"; then alive=1; fi
    done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Dead; now gone from the process table too (once init has reaped them: ~1 s
  # on machines whose pid 1 reaps late), so that `pgrep slurm` is empty after stop.
  for _ in $(seq 1 30); do
    alive=""
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  # Jobs that scancel did not end: this cluster's slurmstepd processes (they carry
  # its SLURM_CONF in their environment) and everything below them.
  leftovers=""
  for pid in $(pgrep -x slurmstepd 2>/dev/null); do
    if grep -qzxF "SLURM_CONF=$d/slurm.conf" "/proc/$pid/environ" 2>/dev/null; then
      leftovers="$leftovers $pid $(slurm_descendants "$pid")"
    fi
  done
  if [ -n "${leftovers// /}" ]; then
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $leftovers 2>/dev/null || true
  fi
  rm -rf "$d/state" "$d/spool" "$d/run" "$d/munge/munge.socket.2" "$d/munge/munge.socket.2.lock"
  return 0
}

case "${1:-}" in
  start)
    postgres_start || { [ "${CI:-}" = "true" ] && exit 1; echo "peers: continuing without PostgreSQL (its tests will skip)"; }
    slurm_start || { [ "${CI:-}" = "true" ] && exit 1; echo "peers: continuing without Slurm (its tests will skip)"; }
    openssh_install || { [ "${CI:-}" = "true" ] && exit 1; echo "peers: continuing without OpenSSH (its tests will skip)"; }
    chromium_install || { [ "${CI:-}" = "true" ] && exit 1; echo "peers: continuing without Chromium (its tests will skip)"; }
    haproxy_install || { [ "${CI:-}" = "true" ] && exit 1; echo "peers: continuing without HAProxy (its tests will skip)"; }
    ;;
  stop)
    slurm_stop
    ;;
  slurm-start)
    slurm_start
    ;;
  slurm-stop)
    slurm_stop
    ;;
  chromium)
    chromium_install
    ;;
  haproxy)
    haproxy_install
    ;;
  postgres)
    postgres_start
    ;;
  *)
    echo "usage: $0 start|stop|slurm-start|slurm-stop|chromium|haproxy|postgres" >&2
    exit 2
    ;;
esac
