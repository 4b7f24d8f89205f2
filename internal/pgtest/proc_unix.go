//go:build unix

package pgtest

import (
	"os/exec"
	"syscall"
)

// killGroupOnCancel runs cmd in its own process group and makes its
// context's cancellation kill the whole group, so that a tool started
// through runuser dies with it. (pg_ctl start detaches the postmaster
// into its own session, so a server is not killed by this.)
func killGroupOnCancel(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
