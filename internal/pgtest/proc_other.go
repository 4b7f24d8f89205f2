//go:build !unix

package pgtest

import "os/exec"

// killGroupOnCancel leaves cmd as it is: its context kills only the
// process itself.
func killGroupOnCancel(cmd *exec.Cmd) {}
