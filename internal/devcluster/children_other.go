//go:build !linux

package devcluster

import "syscall"

// Elsewhere than Linux there is no parent-death signal: children are started
// directly, and outlive a parent killed with SIGKILL.

// RunIfChild does nothing outside Linux: no child is started through a link.
func RunIfChild() {}

func linkBinary(_, path string) (string, error) { return path, nil }

func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
