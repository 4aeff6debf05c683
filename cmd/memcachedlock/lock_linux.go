package main

import "syscall"

// dieWithParent has the kernel kill the command when this process dies,
// however it dies: a wrapper killed with SIGKILL cannot pass a signal on,
// and a command left running would work on without the lock, which was
// freed with this process's connection.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
