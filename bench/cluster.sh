#!/usr/bin/env bash
# cluster.sh: issue 10's benchmark. Builds amqphub and nats-server (from the
# module version go.mod requires), starts a 3-node NATS JetStream cluster
# and two `amqphub serve --cluster` nodes on loopback, runs `amqphub bench`
# scenarios against node A (and, for d2c, against both nodes at once), then
# runs the same scenarios against the embedded single-node mode on the same
# machine for comparison. Prints each command before its report. Not part
# of `make test`.
#
# Usage: bench/cluster.sh [SCENARIO...]   (default: d2c e2e c2d)
#   env DURATION=15s per run; env REPLICAS=3 (stream and bucket replicas)
set -euo pipefail

DURATION=${DURATION:-15s}
REPLICAS=${REPLICAS:-3}
SCENARIOS=${*:-d2c e2e c2d}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/amqphub-cluster.XXXXXX)
PIDS=()
NATS_PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	sleep 1
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$REPO"
go build -o "$WORK/amqphub" ./cmd/amqphub
go build -o "$WORK/nats-server" github.com/nats-io/nats-server/v2

NATS_URLS=nats://127.0.0.1:44221,nats://127.0.0.1:44222,nats://127.0.0.1:44223
for i in 1 2 3; do
	routes=""
	for j in 1 2 3; do [ "$j" = "$i" ] || routes="${routes:+$routes,}nats://127.0.0.1:4424$j"; done
	"$WORK/nats-server" -a 127.0.0.1 -p 4422$i -n n$i -js -sd "$WORK/n$i" --cluster_name bench \
		--cluster nats://127.0.0.1:4424$i --routes "$routes" >"$WORK/n$i.log" 2>&1 &
	PIDS+=($!)
	NATS_PIDS+=($!)
done

wait_ready() { # wait_ready LOG
	for _ in $(seq 300); do grep -q "is ready" "$1" && return 0; sleep 0.2; done
	cat "$1" >&2
	exit 1
}
start_node() { # start_node NAME PLAIN AMQPS HTTPS [serve flags...]
	local name=$1 plain=$2 amqps=$3 https=$4
	shift 4
	"$WORK/amqphub" serve --amqp-addr "$plain" --amqps-addr "$amqps" --https-addr "$https" --log-level warn "$@" \
		>"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
	wait_ready "$WORK/$name.log"
	eval "PID_$name=$!"
	eval "REST_$name=https://$https"
	eval "CA_$name=$(sed -n 's/^ *CA certificate *//p' "$WORK/$name.log" | head -1)"
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) amqphub $(git rev-parse --short HEAD), $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "# NATS: 3 nats-server $(go list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2) processes, JetStream file storage, R$REPLICAS"

CLUSTER_FLAGS=(--cluster "$NATS_URLS" --replicas "$REPLICAS" --in-memory)
start_node A 127.0.0.1:45672 127.0.0.1:45671 127.0.0.1:45443 "${CLUSTER_FLAGS[@]}" --node-id A
start_node B 127.0.0.1:46672 127.0.0.1:46671 127.0.0.1:46443 "${CLUSTER_FLAGS[@]}" --node-id B
HUB_CS=$(grep -m1 'SharedAccessKeyName=iothubowner' "$WORK/A.log" | tr -d ' ')
REST=$REST_A CA=$CA_A

nats_ticks() { # CPU time of the nats-server processes, in clock ticks
	local sum=0
	for p in "${NATS_PIDS[@]}"; do
		[ -r /proc/$p/stat ] || continue
		set -- $(sed 's/^.*) //' /proc/$p/stat)
		sum=$((sum + ${12} + ${13}))
	done
	echo $sum
}

bench() { # bench LABEL URL PID ARGS...
	local label=$1 url=$2 pid=$3
	shift 3
	echo
	echo "## $label"
	echo "\$ amqphub bench $* --amqp-url $url --hub <iothubowner connection string> --rest-url $REST --ca <CA file> --hub-pid <pid>"
	local t0 s0 t1 s1
	t0=$(nats_ticks) s0=$(date +%s.%N)
	"$WORK/amqphub" bench "$@" --amqp-url "$url" --hub "$HUB_CS" --rest-url "$REST" --ca "$CA" --hub-pid "$pid" 2>"$WORK/bench.err" ||
		{ echo "(failed: exit $?)"; tail -3 "$WORK/bench.err"; }
	t1=$(nats_ticks) s1=$(date +%s.%N)
	if [ "$label" != "${label#cluster}" ]; then
		echo "  nats-server   $(echo "($t1 - $t0) / $(getconf CLK_TCK) / ($s1 - $s0)" | bc -l | xargs printf '%.2f') cores (3 processes, over the whole run incl. setup)"
	fi
}

run_all() { # run_all MODE PLAIN_A PID_A [PLAIN_B PID_B]
	local mode=$1 a=$2 pa=$3 b=${4:-} pb=${5:-}
	for s in $SCENARIOS; do
		case $s in
		d2c)
			bench "$mode d2c, one node" "amqp://$a" "$pa" d2c --client raw --duration "$DURATION"
			bench "$mode d2c, go-amqp client" "amqp://$a" "$pa" d2c --client go-amqp --duration "$DURATION"
			if [ -n "$b" ]; then
				echo
				echo "## $mode d2c, both nodes at once (two generators, add the rates)"
				"$WORK/amqphub" bench d2c --client raw --duration "$DURATION" --amqp-url "amqp://$a" --hub "$HUB_CS" --rest-url "$REST" --ca "$CA" 2>&1 >"$WORK/a.out" &
				ga=$!
				"$WORK/amqphub" bench d2c --client raw --duration "$DURATION" --amqp-url "amqp://$b" --hub "$HUB_CS" --rest-url "$REST" --ca "$CA" >"$WORK/b.out" 2>&1 || true
				wait $ga || true
				echo "### node A"; cat "$WORK/a.out"; echo "### node B"; cat "$WORK/b.out"
			fi
			;;
		e2e) bench "$mode e2e (send, read back) at 5000/s" "amqp://$a" "$pa" e2e --client raw --rate 5000 --duration "$DURATION" ;;
		c2d) bench "$mode c2d round trips, 64 devices" "amqp://$a" "$pa" c2d --connections 64 --duration "$DURATION" ;;
		*) echo "unknown scenario $s" >&2; exit 2 ;;
		esac
	done
}

run_all cluster 127.0.0.1:45672 "$PID_A" 127.0.0.1:46672 "$PID_B"

kill "$PID_A" "$PID_B"
start_node E 127.0.0.1:47672 127.0.0.1:47671 127.0.0.1:47443 --data-dir "$WORK/embedded"
HUB_CS=$(grep -m1 'SharedAccessKeyName=iothubowner' "$WORK/E.log" | tr -d ' ')
REST=$REST_E CA=$CA_E
run_all embedded 127.0.0.1:47672 "$PID_E"
