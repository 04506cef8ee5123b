// Command amqphub runs the hub (`amqphub serve`) and talks to a running one.
package main

import (
	"fmt"
	"os"
)

const usage = `amqphub: a self-hosted hub speaking Azure IoT Hub's AMQP 1.0 dialect.

Usage:
  amqphub serve [flags]     run the hub
  amqphub help              this text

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
