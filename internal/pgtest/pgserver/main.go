// Command pgserver starts a throwaway PostgreSQL cluster for tests outside
// Go (the browser suite), prints its DSN on one line, and stops and removes
// it when its standard input closes or it gets SIGINT/SIGTERM.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hypersync/hypersync/internal/pgtest"
)

func main() {
	c, err := pgtest.StartCluster()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgserver:", err)
		os.Exit(1)
	}
	fmt.Println(c.DSN)
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	select {
	case <-done:
	case <-sig:
	}
	c.Destroy()
}
