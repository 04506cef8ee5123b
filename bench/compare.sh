#!/usr/bin/env bash
# compare.sh: durable device-to-cloud throughput and latency of amqphub and
# RabbitMQ 3.10 (Debian's rabbitmq-server with the rabbitmq_amqp1_0 plugin)
# on this machine, one after the other in the same run, driven by the same
# load generator (`amqphub bench d2c`), and a table with the ratios.
#
# Both servers run as separate processes listening on 127.0.0.1 only, on
# ports of their own, with their data in a temporary directory; both store
# every message durably before acknowledging it (amqphub: fdatasync of its
# partition log; RabbitMQ: a durable classic queue and durable messages,
# acknowledged on publisher confirm). Everything is stopped and removed at
# the end, also on failure or Ctrl-C.
#
# Needs root (apt-get, and the package's files), apt, Go (to build amqphub;
# or AMQPHUB=/path/to/amqphub), and ~2 minutes with the defaults.
#
# Usage: sudo bench/compare.sh [-d DURATION] [-c CONNECTIONS] [-i IN_FLIGHT]
#          [-s SIZE] [-r RATE] [-k CLIENTS] [-n ROUNDS] [-u]
#   -d  how long each run offers load (default 15s)
#   -c  device connections (default 4)
#   -i  unacknowledged messages per connection (default 256)
#   -s  message payload bytes (default 256)
#   -r  fixed rate of the latency runs, msgs/s over all connections (default 5000)
#   -k  load generator clients, space-separated: raw and/or go-amqp (default "raw go-amqp")
#   -n  rounds; each round runs every case on both servers (default 1)
#   -u  uninstall rabbitmq-server at the end if this script installed it
set -euo pipefail

DURATION=15s CONNECTIONS=4 INFLIGHT=256 SIZE=256 RATE=5000 CLIENTS="raw go-amqp" ROUNDS=1 UNINSTALL=0
while getopts "d:c:i:s:r:k:n:uh" opt; do
	case $opt in
	d) DURATION=$OPTARG ;;
	c) CONNECTIONS=$OPTARG ;;
	i) INFLIGHT=$OPTARG ;;
	s) SIZE=$OPTARG ;;
	r) RATE=$OPTARG ;;
	k) CLIENTS=$OPTARG ;;
	n) ROUNDS=$OPTARG ;;
	u) UNINSTALL=1 ;;
	*) sed -n '2,29p' "$0"; exit 2 ;;
	esac
done

# Loopback ports; chosen away from both servers' defaults so a developer's
# own amqphub or RabbitMQ keeps running undisturbed.
HUB_AMQP=127.0.0.1:47672 HUB_AMQPS=127.0.0.1:47671 HUB_HTTPS=127.0.0.1:47443
RMQ_PORT=46672 RMQ_DIST=46673 RMQ_EPMD=46674

log() { printf '%s compare: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get and RabbitMQ's files need it)"
command -v apt-get >/dev/null || die "needs apt-get (Debian or Ubuntu)"
for p in $HUB_AMQP $HUB_AMQPS $HUB_HTTPS 127.0.0.1:$RMQ_PORT 127.0.0.1:$RMQ_DIST 127.0.0.1:$RMQ_EPMD; do
	if ss -Hltn "sport = :${p##*:}" 2>/dev/null | grep -q .; then
		die "port ${p##*:} is in use; free it or edit the ports at the top of $0"
	fi
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/amqphub-compare.XXXXXX)
HUB_PID="" RMQ_STARTED=0 INSTALLED=0 POLICY_ADDED=0
RMQ_BIN=/usr/lib/rabbitmq/bin

rmq_env() {
	env HOME="$WORK/rmq" \
		RABBITMQ_CONFIG_FILE="$WORK/rmq/rabbitmq.conf" \
		RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/rmq/enabled_plugins" \
		RABBITMQ_MNESIA_BASE="$WORK/rmq/mnesia" \
		RABBITMQ_LOG_BASE="$WORK/rmq/log" \
		RABBITMQ_PID_FILE="$WORK/rmq/pid" \
		RABBITMQ_NODENAME=amqphubcompare@localhost \
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
		RABBITMQ_NODE_PORT=$RMQ_PORT \
		RABBITMQ_DIST_PORT=$RMQ_DIST \
		ERL_EPMD_ADDRESS=127.0.0.1 \
		ERL_EPMD_PORT=$RMQ_EPMD \
		"$@"
}

cleanup() {
	set +e
	if [ -n "$HUB_PID" ]; then
		kill "$HUB_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$HUB_PID" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$HUB_PID" 2>/dev/null
	fi
	if [ "$RMQ_STARTED" = 1 ]; then
		log "stopping RabbitMQ"
		rmq_env timeout 60 "$RMQ_BIN/rabbitmqctl" stop >/dev/null 2>&1 ||
			{ [ -f "$WORK/rmq/pid" ] && kill -9 "$(cat "$WORK/rmq/pid")" 2>/dev/null; }
		timeout 10 env ERL_EPMD_PORT=$RMQ_EPMD epmd -kill >/dev/null 2>&1
	fi
	[ "$POLICY_ADDED" = 1 ] && rm -f /usr/sbin/policy-rc.d
	if [ "$INSTALLED" = 1 ] && [ "$UNINSTALL" = 1 ]; then
		log "removing rabbitmq-server"
		DEBIAN_FRONTEND=noninteractive timeout 300 apt-get purge -y -q rabbitmq-server >/dev/null 2>&1
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. amqphub
if [ -n "${AMQPHUB:-}" ]; then
	cp "$AMQPHUB" "$WORK/amqphub"
else
	command -v go >/dev/null || die "needs Go to build amqphub (or set AMQPHUB=/path/to/amqphub)"
	log "building amqphub"
	(cd "$REPO" && go build -o "$WORK/amqphub" ./cmd/amqphub)
fi
BENCH="$WORK/amqphub"

# 2. RabbitMQ: Debian's package, kept from starting its own (all
# interfaces, default ports) service while it is installed.
if ! dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q "install ok installed"; then
	log "installing rabbitmq-server (apt-get)"
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		POLICY_ADDED=1
	fi
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends rabbitmq-server >"$WORK/apt.log" 2>&1 ||
		{ tail -20 "$WORK/apt.log" >&2; die "apt-get install rabbitmq-server failed"; }
	INSTALLED=1
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
	fi
fi
RMQ_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server)
case $RMQ_VERSION in 3.10.*) ;; *) log "warning: rabbitmq-server $RMQ_VERSION is not the 3.10 series the comparison was written for" ;; esac

mkdir -p "$WORK/rmq"
cat >"$WORK/rmq/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$RMQ_PORT
loopback_users.guest = true
EOF
echo '[rabbitmq_amqp1_0].' >"$WORK/rmq/enabled_plugins"
log "starting RabbitMQ $RMQ_VERSION on 127.0.0.1:$RMQ_PORT"
rmq_env "$RMQ_BIN/rabbitmq-server" >"$WORK/rmq/server.log" 2>&1 &
RMQ_STARTED=1
rmq_env timeout 120 "$RMQ_BIN/rabbitmqctl" wait "$WORK/rmq/pid" --timeout 120 >/dev/null 2>&1 ||
	{ tail -30 "$WORK/rmq/server.log" >&2; die "RabbitMQ did not start"; }
RMQ_PID=$(cat "$WORK/rmq/pid")
declare_queue() {
	rmq_env "$RMQ_BIN/rabbitmqctl" eval 'rabbit_amqqueue:declare(rabbit_misc:r(<<"/">>, queue, <<"bench">>), true, false, [{<<"x-queue-type">>, longstr, <<"classic">>}], none, <<"amqphub-compare">>).' >/dev/null
	rmq_env "$RMQ_BIN/rabbitmqctl" list_queues -q name durable type 2>/dev/null | grep -Eq '^bench[[:space:]]+true[[:space:]]+classic' ||
		die "could not declare the durable classic queue"
}
declare_queue
purge_queue() { rmq_env "$RMQ_BIN/rabbitmqctl" purge_queue -q bench >/dev/null 2>&1 || true; }

# 3. amqphub in its own process.
log "starting amqphub on $HUB_AMQP"
"$WORK/amqphub" serve --data-dir "$WORK/hub" --amqp-addr $HUB_AMQP --amqps-addr $HUB_AMQPS \
	--https-addr $HUB_HTTPS --log-level warn >"$WORK/hub.log" 2>&1 &
HUB_PID=$!
for _ in $(seq 100); do grep -q "is ready" "$WORK/hub.log" && break; sleep 0.2; done
grep -q "is ready" "$WORK/hub.log" || { cat "$WORK/hub.log" >&2; die "amqphub did not start"; }
HUB_CS=$(grep -m1 'SharedAccessKeyName=iothubowner' "$WORK/hub.log" | tr -d ' ')

# 4. The runs.
run() { # run NAME SERVER CLIENT EXTRA...: one d2c run, its JSON report in $WORK/NAME.json
	local name=$1 server=$2 client=$3
	shift 3
	local common=(--client "$client" --connections "$CONNECTIONS" --inflight "$INFLIGHT" --size "$SIZE" --duration "$DURATION" --drain 60s --json)
	local limit=$((${DURATION%s} + 150))
	if [ "$server" = amqphub ]; then
		timeout $limit "$BENCH" bench d2c "${common[@]}" "$@" --hub "$HUB_CS" --ca "$WORK/hub/tls/ca.pem" \
			--rest-url "https://$HUB_HTTPS" --amqp-url "amqp://$HUB_AMQP" --hub-pid "$HUB_PID" >"$WORK/$name.json"
	else
		timeout $limit "$BENCH" bench d2c "${common[@]}" "$@" --generic --amqp-url "amqp://guest:guest@127.0.0.1:$RMQ_PORT" \
			--address /amq/queue/bench --hub-pid "$RMQ_PID" >"$WORK/$name.json"
		purge_queue
	fi
}
num() { # num FILE KEY: the first numeric value of "KEY" in a report
	sed -n "s/^ *\"$2\": \([0-9.eE+-]*\),\{0,1\}$/\1/p" "$1" | head -1
}

cases=()
for r in $(seq "$ROUNDS"); do
	for client in $CLIENTS; do
		for mode in unbounded rate; do
			extra=()
			[ "$mode" = rate ] && extra=(--rate "$RATE")
			for server in amqphub rabbitmq; do
				name="r$r-$client-$mode-$server"
				log "round $r: $server, client $client, $mode"
				run "$name" $server "$client" "${extra[@]}"
			done
			cases+=("r$r-$client-$mode")
		done
	done
done

# 5. The table.
{
	echo
	echo "amqphub vs RabbitMQ $RMQ_VERSION (rabbitmq_amqp1_0), durable d2c: $CONNECTIONS connections, $SIZE-byte messages,"
	echo "unbounded = $INFLIGHT unacknowledged per connection, rate = $RATE msgs/s offered; $DURATION per run"
	echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	printf '%-26s %12s %12s %8s   %-21s %-21s %s\n' case "amqphub/s" "RabbitMQ/s" ratio "amqphub p50/p99 ms" "RabbitMQ p50/p99 ms" "server cpu cores (hub/rmq)"
	for c in "${cases[@]}"; do
		h="$WORK/$c-amqphub.json" q="$WORK/$c-rabbitmq.json"
		hr=$(num "$h" msgs_per_sec) qr=$(num "$q" msgs_per_sec)
		ratio=$(awk -v a="${hr:-0}" -v b="${qr:-0}" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "-" }')
		printf '%-26s %12.0f %12.0f %8s   %-21s %-21s %s\n' "$c" "${hr:-0}" "${qr:-0}" "$ratio" \
			"$(num "$h" p50_ms)/$(num "$h" p99_ms)" "$(num "$q" p50_ms)/$(num "$q" p99_ms)" \
			"$(awk -v a="$(num "$h" hub_cpu_cores)" -v b="$(num "$q" hub_cpu_cores)" 'BEGIN { printf "%.2f/%.2f", a, b }')"
	done
	echo
	echo "sent/accepted/failed per run:"
	for c in "${cases[@]}"; do
		for s in amqphub rabbitmq; do
			f="$WORK/$c-$s.json"
			sent=$(num "$f" sent) acc=$(num "$f" accepted) failed=$(num "$f" failed)
			printf '  %-36s %s/%s/%s\n' "$c-$s" "${sent:-0}" "${acc:-0}" "${failed:-0}"
		done
	done
}
