// Command amqphub runs the hub (`amqphub serve`) and talks to a running one.
package main

import (
	"fmt"
	"os"
)

const usage = `amqphub: a self-hosted hub speaking Azure IoT Hub's AMQP 1.0 dialect.

Usage:
  amqphub serve [flags]                          run the hub
  amqphub device create|list|show|delete|connection-string [id] [flags]
                                                 manage devices of a running hub (REST)
  amqphub token [--device ID | --connection-string CS] [--ttl 1h]
                                                 print a SAS token (default: for the --hub policy)
  amqphub bench d2c|e2e|c2d|connections|read [flags]
                                                 load generator and benchmarks (see BENCHMARKS.md)
  amqphub send --device ID [--count N] [--rate R] [--body TEXT | --file F]
                                                 send device telemetry
  amqphub monitor [--from earliest|latest|TIME] [--device ID]
                                                 tail telemetry from every partition
  amqphub c2d send <device-id> [--body TEXT] [--ack full]
                                                 queue a cloud-to-device message
  amqphub c2d receive --device ID [--count N]    receive (and complete) messages as a device
  amqphub feedback [--count N]                   print feedback on cloud-to-device messages
  amqphub twin show|update <device-id> [--desired JSON] [--tags JSON] [--reported JSON]
                                                 read or change a twin
  amqphub method invoke <device-id> <method> [--payload JSON]
                                                 call a direct method
  amqphub soak [--cycles N] [--duration D] [--binary PATH]
                                                 crash soak: SIGKILL a hub under load, verify nothing acknowledged is lost
  amqphub help                                   this text

Client commands reach the hub with --hub (a service connection string; default:
the development hub on localhost), --ca (the hub's CA file) and --json for scripts;
AMQP commands also take --amqp-addr (default {HostName}:5671) and --timeout.

Run "amqphub serve -h" for the serve flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "device":
		err = deviceCmd(os.Args[2:], os.Stdout)
	case "token":
		err = tokenCmd(os.Args[2:], os.Stdout)
	case "bench":
		err = benchCmd(os.Args[2:], os.Stdout, os.Stderr)
	case "send":
		err = sendCmd(os.Args[2:], os.Stdin, os.Stdout, os.Stderr)
	case "monitor":
		err = monitorCmd(os.Args[2:], os.Stdout, os.Stderr)
	case "c2d":
		err = c2dCmd(os.Args[2:], os.Stdin, os.Stdout, os.Stderr)
	case "feedback":
		err = feedbackCmd(os.Args[2:], os.Stdout, os.Stderr)
	case "twin":
		err = twinCmd(os.Args[2:], os.Stdout, os.Stderr)
	case "method":
		err = methodCmd(os.Args[2:], os.Stdout, os.Stderr)
	case "soak":
		err = soakCmd(os.Args[2:], os.Stdout, os.Stderr)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "amqphub: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "amqphub:", err)
		os.Exit(1)
	}
}
