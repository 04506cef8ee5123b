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
  amqphub soak [--cycles N] [--duration D] [--binary PATH]
                                                 crash soak: SIGKILL a hub under load, verify nothing acknowledged is lost
  amqphub help                                   this text

Client commands reach the hub with --hub (a service connection string; default:
the development hub on localhost), --ca (the hub's CA file) and --json for scripts.

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
