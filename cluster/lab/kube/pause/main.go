// Command pause is the lab's pod sandbox process: containerd's CRI starts one per
// pod as the holder of the pod's namespaces. It sleeps until SIGTERM or SIGINT
// (then exits 0) and, being pid 1 of the pod's pid namespace when that is shared,
// reaps every child that exits. Built statically by scripts/build-kube.sh
// (CGO_ENABLED=0) so it runs from an image with nothing else in it.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("rto-harness pause 1")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as pid 1")
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		switch s {
		case syscall.SIGCHLD:
			reap()
		default:
			fmt.Fprintf(os.Stderr, "pause: %v: exiting\n", s)
			os.Exit(0)
		}
	}
}
