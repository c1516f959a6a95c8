#!/usr/bin/env bash
# A throwaway local 3-node RabbitMQ cluster for tests, beside (never touching)
# the system broker rabbit@localhost on 127.0.0.1:5672.
#
# Nodes rpc-cluster-{1,2,3}@localhost, AMQP on 127.0.0.1:5681-5683, Erlang
# distribution on 127.0.0.1:25681-25683, all files under
# ${RPC_CLUSTER_DIR:-/tmp/rpc-cluster} (owned by the rabbitmq user).
#
# Usage: bash .ci/cluster.sh COMMAND
#   available      exit 0 if this machine can run the cluster, else say why, exit 1
#   start          start (or confirm) the cluster; last stdout line is the URL list
#                  amqp://guest:guest@127.0.0.1:5681,...:5682,...:5683
#   stop           stop all three nodes and remove the base directory (exit 0 if none run)
#   stop-node K    stop node K (1..3) cleanly (rabbitmqctl stop)
#   kill-node K    SIGKILL node K's Erlang VM (a crash, not a shutdown)
#   start-node K   start node K again from its data; it rejoins the cluster
#   status         one line per node: name, address, running or not
#
# start-node expects the other nodes to be up (a node that was not the last
# to stop waits for its peers before it boots). Environment:
# RPC_CLUSTER_DIR (base directory), RPC_CLUSTER_START_TIMEOUT (seconds a
# node may take to boot, default 120).
#
# Progress goes to stderr, results to stdout; a failure ends with one line on
# stderr and a non-zero exit. Every wait is bounded.
set -euo pipefail

# Make the base directory absolute before we leave the caller's directory.
BASE=${RPC_CLUSTER_DIR:-/tmp/rpc-cluster}
[[ $BASE == /* ]] || BASE=$PWD/$BASE
BASE=${BASE%/}
# Nodes inherit the cwd and may write erl_crash.dump there: use a neutral one.
cd /

RMQ_USER=rabbitmq
# The system node's cookie: the CLI authenticates with it to every node, ours
# included. Erlang reads $HOME/.erlang.cookie, so HOME is set to its directory.
COOKIE_FILE=/var/lib/rabbitmq/.erlang.cookie
COOKIE_HOME=${COOKIE_FILE%/*}
START_TIMEOUT=${RPC_CLUSTER_START_TIMEOUT:-120} # seconds for one node to boot
CTL_TIMEOUT=60                                   # seconds for one CLI call
NODES=(1 2 3)

say() { printf '[cluster] %s\n' "$*" >&2; }
die() {
  printf 'cluster.sh: %s\n' "$*" >&2
  exit 1
}

node_name() { printf 'rpc-cluster-%s@localhost' "$1"; }
amqp_port() { printf '%s' $((5680 + $1)); }
dist_port() { printf '%s' $((25680 + $1)); }
node_dir() { printf '%s/node%s' "$BASE" "$1"; }
pid_file() { printf '%s/rabbit.pid' "$(node_dir "$1")"; }
urls() {
  local k out=()
  for k in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$k")"); done
  (IFS=,; printf '%s\n' "${out[*]}")
}

# Debian's /usr/sbin wrappers send the server's output to the system node's
# /var/log/rabbitmq/startup_log, so call the real scripts behind them.
tool() {
  if [[ -x /usr/lib/rabbitmq/bin/$1 ]]; then
    printf '%s' "/usr/lib/rabbitmq/bin/$1"
  else
    command -v "$1"
  fi
}

# Run a command as the rabbitmq user (the nodes' files and the cookie are
# its), keeping the environment, with HOME where the cookie is.
# fd 9 (the lock, see lock()) is closed: a node inheriting it would hold
# the lock for as long as it runs.
as_rmq() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u "$RMQ_USER" -- env HOME="$COOKIE_HOME" "$@" 9>&-
  else
    env HOME="$COOKIE_HOME" "$@" 9>&-
  fi
}

# rabbitmqctl against node K, bounded in time; output to the CLI log.
cli_log() { if [[ -d $BASE ]]; then printf '%s/cli.log' "$BASE"; else printf /dev/null; fi; }
# Each CLI call is a short-lived Erlang node listening on a port of its own
# range (35672-35682 by default); ours get another one so that our parallel
# calls and anyone else's (the system node's users) do not run out of ports.
export RABBITMQ_CTL_DIST_PORT_MIN=35690 RABBITMQ_CTL_DIST_PORT_MAX=35720
ctl() {
  local k=$1
  shift
  as_rmq timeout "$CTL_TIMEOUT" "$(tool rabbitmqctl)" -n "$(node_name "$k")" "$@"
}
# Each call is headed in the log, so that cli_error can find its own output.
ctl_q() {
  printf '== rabbitmqctl -n %s %s\n' "$(node_name "$1")" "${*:2}" >>"$(cli_log)"
  ctl "$@" >>"$(cli_log)" 2>&1
}
# What the last CLI call printed, in one line of at most 300 characters.
cli_error() {
  local f
  f=$(cli_log)
  [[ -r $f ]] || return 0
  awk '/^== rabbitmqctl / { out = ""; next } { out = out " " $0 } END { print out }' "$f" |
    sed 's/\x1b\[[0-9;]*m//g; s/ Usage .*//' | tr -s ' \t' ' ' | sed 's/^ //; s/ $//' | cut -c 1-300
}
# A CLI call that changes membership, tried 3 times, 3 s apart: nodes that
# join or start together can race inside RabbitMQ (rabbitmq-server#2631),
# and the same call a moment later goes through. CTL_ERROR says why the
# last try failed.
CTL_ERROR=""
ctl_retry() {
  local try rc
  for try in 1 2 3; do
    rc=0
    ctl_q "$@" || rc=$?
    [[ $rc -ne 0 ]] || return 0
    if [[ $rc -eq 124 ]]; then CTL_ERROR="no answer within ${CTL_TIMEOUT}s"; else CTL_ERROR=$(cli_error); fi
    say "rabbitmqctl -n $(node_name "$1") ${*:2} failed (try $try of 3): $CTL_ERROR"
    [[ $try -eq 3 ]] || sleep 3
  done
  return 1
}

# A PID is node K's only if it is a beam.smp whose environment names node K:
# that way we can never signal the system node or anything else.
is_node_beam() {
  local pid=$1 name comm=""
  printf -v name 'rpc-cluster-%s@localhost' "$2" # no $(...): called in a loop
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # read, not cat: node_pid calls this for every process on the machine.
  { read -r comm <"/proc/$pid/comm"; } 2>/dev/null || return 1
  [[ $comm == beam.smp ]] || return 1
  grep -qzxF "RABBITMQ_NODENAME=$name" "/proc/$pid/environ" 2>/dev/null
}
# Whether a beam PID we identified still exists (a dying process's environ
# reads empty, so is_node_beam cannot tell "gone" from "exiting").
beam_alive() {
  local comm="" stat=""
  { read -r comm <"/proc/$1/comm" && read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  [[ $comm == beam.smp && $stat != *") Z "* ]]
}
# Print node K's beam PID (pid file first, else a /proc scan, which also finds
# a node whose directory was removed); fail if it does not run.
node_pid() {
  local k=$1 pid="" f
  f=$(pid_file "$k")
  [[ -r $f ]] && pid=$(tr -dc 0-9 <"$f")
  if [[ -n $pid ]] && is_node_beam "$pid" "$k"; then
    printf '%s\n' "$pid"
    return 0
  fi
  for f in /proc/[0-9]*/comm; do
    pid=${f#/proc/}
    pid=${pid%/comm}
    if is_node_beam "$pid" "$k"; then
      printf '%s\n' "$pid"
      return 0
    fi
  done
  return 1
}

# The port goes in as $1 of the child shell, hence the single quotes.
# shellcheck disable=SC2016
port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# Log in as guest over 127.0.0.1 with a bare AMQP 0-9-1 handshake (stdlib
# only, so it needs no client library): Connection.Tune after Start-Ok means
# the credentials and the loopback-only rule for guest both passed.
PY=$(command -v /usr/bin/python3 python3 2>/dev/null | head -n 1 || true)
amqp_login() {
  [[ -n $PY ]] || return 0 # no Python: the port check has to do
  timeout 10 "$PY" - "$1" <<'EOF' 2>/dev/null
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
def read(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit(1)
        b += c
    return b
def frame():
    _, _, size = struct.unpack(">BHI", read(7))
    return read(size + 1)[:size]
s.sendall(b"AMQP\x00\x00\x09\x01")
if frame()[:4] != struct.pack(">HH", 10, 10):  # Connection.Start
    sys.exit(1)
resp = b"\x00guest\x00guest"
args = struct.pack(">I", 0) + b"\x05PLAIN" + struct.pack(">I", len(resp)) + resp + b"\x05en_US"
payload = struct.pack(">HH", 10, 11) + args  # Connection.Start-Ok
s.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
sys.exit(0 if frame()[:4] == struct.pack(">HH", 10, 30) else 1)  # Connection.Tune
EOF
}

# Number of our nodes that node K's cluster_status lists as running.
running_count() {
  local json list k n=0
  json=$(ctl "$1" -q cluster_status --formatter json 2>>"$(cli_log)") || {
    printf 0
    return 0
  }
  list=$(sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' <<<"$json")
  for k in "${NODES[@]}"; do
    [[ $list == *"\"$(node_name "$k")\""* ]] && n=$((n + 1))
  done
  printf '%s' "$n"
}

# Healthy: three beams, three open AMQP ports, guest logins, and node 1 sees
# all three running. Sets REASON when not.
REASON=""
healthy() {
  local k n
  for k in "${NODES[@]}"; do
    node_pid "$k" >/dev/null || { REASON="$(node_name "$k") is not running"; return 1; }
    port_open "$(amqp_port "$k")" || { REASON="127.0.0.1:$(amqp_port "$k") is not listening"; return 1; }
  done
  # Membership can lag a start_app by a moment: a few tries, one second apart.
  for _ in 1 2 3 4 5; do
    n=$(running_count 1)
    [[ $n -eq ${#NODES[@]} ]] && break
    sleep 1
  done
  [[ $n -eq ${#NODES[@]} ]] || { REASON="cluster_status shows $n of ${#NODES[@]} nodes running"; return 1; }
  for k in "${NODES[@]}"; do
    amqp_login "$(amqp_port "$k")" || { REASON="guest cannot log in on 127.0.0.1:$(amqp_port "$k")"; return 1; }
  done
}

# Why this machine cannot run the cluster, or nothing if it can.
unavailable_reason() {
  local t k p
  for t in rabbitmq-server rabbitmqctl; do
    command -v "$t" >/dev/null 2>&1 || [[ -x /usr/lib/rabbitmq/bin/$t ]] || { echo "$t not found"; return; }
  done
  command -v timeout >/dev/null 2>&1 || { echo "timeout (coreutils) not found"; return; }
  id -u "$RMQ_USER" >/dev/null 2>&1 || { echo "no $RMQ_USER user"; return; }
  if [[ $(id -u) -eq 0 ]]; then
    command -v runuser >/dev/null 2>&1 || { echo "runuser not found"; return; }
  elif [[ $(id -un) != "$RMQ_USER" ]]; then
    echo "must run as root or $RMQ_USER, not $(id -un)"
    return
  fi
  as_rmq test -r "$COOKIE_FILE" || { echo "Erlang cookie $COOKIE_FILE not readable by $RMQ_USER"; return; }
  # A port held by something other than our node would make that node fail.
  for k in "${NODES[@]}"; do
    node_pid "$k" >/dev/null && continue
    for p in "$(amqp_port "$k")" "$(dist_port "$k")"; do
      port_open "$p" && { echo "port 127.0.0.1:$p is in use by another process"; return; }
    done
  done
  return 0
}

# Files of node K: its own config (the system one pins 5672), its own env file
# (the system one sets NODENAME=rabbit@localhost), and an empty plugin list so
# nothing like the management plugin binds a port.
write_node_files() {
  local k=$1 d line
  d=$(node_dir "$k")
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$k")
loopback_users.guest = true
log.console = false
log.file.level = info
EOF
  printf '[].\n' >"$d/enabled_plugins"
  # Quoted, since ERL_FLAGS has spaces; the values hold no single quote.
  node_env "$k" | while IFS= read -r line; do
    printf "export %s='%s'\n" "${line%%=*}" "${line#*=}"
  done >"$d/rabbitmq-env.conf"
}

# The settings of node K, as lines NAME=VALUE: written to its env file and
# exported to its process (so its environment names it, see is_node_beam).
node_env() {
  local k=$1 d
  d=$(node_dir "$k")
  cat <<EOF
RABBITMQ_NODENAME=$(node_name "$k")
RABBITMQ_USE_LONGNAME=false
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$(amqp_port "$k")
RABBITMQ_DIST_PORT=$(dist_port "$k")
RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config
RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
RABBITMQ_MNESIA_BASE=$d/mnesia
RABBITMQ_LOG_BASE=$d/log
RABBITMQ_PID_FILE=$d/rabbit.pid
RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
ERL_EPMD_ADDRESS=127.0.0.1
ERL_CRASH_DUMP=$d/erl_crash.dump
ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}
EOF
}

# Launch node K detached (the beam outlives this script); returns at once.
launch() {
  local k=$1 d line
  d=$(node_dir "$k")
  rm -f "$(pid_file "$k")" # a stale one (after kill-node) would fool `wait`
  (
    while IFS= read -r line; do export "${line?}"; done < <(node_env "$k")
    as_rmq "$(tool rabbitmq-server)" -detached >>"$d/log/startup.log" 2>&1
  )
}

# Wait (bounded) until node K's pid file appears and RabbitMQ is up on it.
# (`await_startup` fails at once while the node is not yet registered with
# epmd; `wait PIDFILE` waits for that too, then for the rabbit application.)
await_node() {
  local k=$1
  as_rmq timeout $((START_TIMEOUT + 10)) "$(tool rabbitmqctl)" -n "$(node_name "$k")" \
    wait "$(pid_file "$k")" --timeout "$START_TIMEOUT" >>"$(cli_log)" 2>&1
}

# Run "FUNCTION K" for each K given, in parallel; fail if any failed.
each() {
  local f=$1 k pids=() rc=0
  shift
  for k in "$@"; do
    "$f" "$k" &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k" || rc=1; done
  return "$rc"
}

# Stop node K: rabbitmqctl stop, then (bounded) wait for its beam to exit,
# then SIGKILL if it is still there. Quiet and successful if it is not running.
stop_one() {
  local k=$1 pid
  pid=$(node_pid "$k") || return 0
  ctl_q "$k" stop || true
  for _ in $(seq 1 60); do
    beam_alive "$pid" || return 0
    sleep 0.5
  done
  if is_node_beam "$pid" "$k"; then
    say "$(node_name "$k") did not stop in time; SIGKILL to PID $pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 1 20); do
    beam_alive "$pid" || return 0
    sleep 0.5
  done
  return 1
}

stop_all() { each stop_one "${NODES[@]}"; }

any_running() {
  local k
  for k in "${NODES[@]}"; do node_pid "$k" >/dev/null && return 0; done
  return 1
}

# Serialize commands that change the cluster (tests may run several at once).
lock() {
  local f="$BASE.lock"
  command -v flock >/dev/null 2>&1 || return 0
  { [[ -e $f ]] || : >"$f"; } 2>/dev/null || return 0
  [[ -w $f ]] || return 0
  exec 9>>"$f"
  flock -w 300 9 || die "another cluster.sh held $f for 300 s"
}

check_k() {
  [[ ${1:-} =~ ^[1-3]$ ]] || die "node number must be 1, 2 or 3, not '${1:-}'"
}

# Start node K from its data dir and wait until it is up; it rejoins by itself
# because its Mnesia directory lists the other members.
start_node() {
  local k=$1
  if node_pid "$k" >/dev/null; then
    say "$(node_name "$k") is already running"
    return 0
  fi
  [[ -d $(node_dir "$k")/mnesia ]] || { REASON="$(node_name "$k") has no data under $(node_dir "$k") (run start)"; return 1; }
  launch "$k" || { REASON="could not launch $(node_name "$k") (see $(node_dir "$k")/log)"; return 1; }
  if ! await_node "$k"; then
    stop_one "$k" || true # do not leave it waiting for its peers
    REASON="$(node_name "$k") did not start within ${START_TIMEOUT}s (see $(node_dir "$k")/log)"
    return 1
  fi
}

cmd_available() {
  local why
  why=$(unavailable_reason)
  [[ -z $why ]] || { printf 'cluster.sh: unavailable: %s\n' "$why"; exit 1; }
  echo "available"
}

stop_app_of() { ctl_q "$1" stop_app; }
# A fresh start failed: stop what it started (keeping the logs), say why.
fail_start() {
  stop_all || true
  die "$1"
}

cmd_start() {
  local why k t0=$SECONDS
  why=$(unavailable_reason)
  [[ -z $why ]] || die "cannot start: $why"
  lock
  if healthy; then
    say "cluster already up and healthy"
    urls
    return 0
  fi
  # Some of our nodes run: bring up the others from their data, if that heals it.
  if any_running; then
    say "cluster not healthy ($REASON); starting the missing nodes"
    for k in "${NODES[@]}"; do
      node_pid "$k" >/dev/null || start_node "$k" || break
    done
    if healthy; then
      say "cluster healthy after $((SECONDS - t0)) s"
      urls
      return 0
    fi
    say "still not healthy ($REASON); recreating the cluster"
    stop_all || die "could not stop the old nodes"
  fi

  # A fresh cluster in an empty base directory.
  rm -rf "$BASE"
  mkdir -p "$BASE"
  for k in "${NODES[@]}"; do write_node_files "$k"; done
  [[ $(id -u) -ne 0 ]] || chown -R "$RMQ_USER:" "$BASE"
  as_rmq test -w "$BASE" || die "$BASE is not writable by $RMQ_USER"

  # Boot in parallel: on an idle machine one node takes ~9 s and three
  # together barely longer (on 2 busy CPUs 20-30 s).
  say "booting $(node_name 1), $(node_name 2), $(node_name 3)"
  each launch "${NODES[@]}" || fail_start "could not launch every node (see $BASE/node*/log)"
  if ! each await_node "${NODES[@]}"; then
    for k in "${NODES[@]}"; do
      port_open "$(amqp_port "$k")" ||
        fail_start "$(node_name "$k") did not start within ${START_TIMEOUT}s (see $(node_dir "$k")/log)"
    done
    fail_start "a node did not start within ${START_TIMEOUT}s (see $BASE/cli.log)"
  fi
  say "nodes up after $((SECONDS - t0)) s; joining 2 and 3 to 1"

  # Each CLI call costs ~1 s of VM start, so stop_app runs on 2 and 3
  # together; the joins and the start_apps go one node at a time, since two
  # at once can race in node 1's Mnesia schema.
  each stop_app_of "${NODES[@]:1}" || fail_start "stop_app failed (see $BASE/cli.log)"
  for k in "${NODES[@]:1}"; do
    ctl_retry "$k" join_cluster "$(node_name 1)" ||
      fail_start "$(node_name "$k") could not join $(node_name 1): $CTL_ERROR"
  done
  for k in "${NODES[@]:1}"; do
    ctl_retry "$k" start_app || fail_start "start_app failed on $(node_name "$k"): $CTL_ERROR"
  done
  healthy || fail_start "cluster not healthy after start: $REASON"
  say "cluster up after $((SECONDS - t0)) s"
  urls
}

cmd_stop() {
  lock
  stop_all || die "could not stop every node"
  rm -rf "$BASE"
  say "stopped"
}

cmd_stop_node() {
  check_k "${1:-}"
  lock
  node_pid "$1" >/dev/null || { say "$(node_name "$1") is not running"; return 0; }
  stop_one "$1" || die "could not stop $(node_name "$1")"
  say "$(node_name "$1") stopped"
}

cmd_kill_node() {
  local pid
  check_k "${1:-}"
  lock
  pid=$(node_pid "$1") || { say "$(node_name "$1") is not running"; return 0; }
  kill -KILL "$pid"
  for _ in $(seq 1 20); do
    beam_alive "$pid" || { say "$(node_name "$1") (PID $pid) killed"; return 0; }
    sleep 0.5
  done
  die "PID $pid of $(node_name "$1") survived SIGKILL"
}

cmd_start_node() {
  check_k "${1:-}"
  lock
  start_node "$1" || die "$REASON"
  say "$(node_name "$1") running"
}

cmd_status() {
  local k pid state
  for k in "${NODES[@]}"; do
    if pid=$(node_pid "$k"); then
      if port_open "$(amqp_port "$k")"; then state="running (PID $pid)"; else state="not running (VM up, PID $pid, AMQP closed)"; fi
    else
      state="not running"
    fi
    printf '%s 127.0.0.1:%s %s\n' "$(node_name "$k")" "$(amqp_port "$k")" "$state"
  done
}

case ${1:-} in
  available) cmd_available ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  stop-node) cmd_stop_node "${2:-}" ;;
  kill-node) cmd_kill_node "${2:-}" ;;
  start-node) cmd_start_node "${2:-}" ;;
  status) cmd_status ;;
  *) die "usage: bash .ci/cluster.sh available|start|stop|status|stop-node K|kill-node K|start-node K" ;;
esac
