package proxy

import "syscall"

// syscallEMFILE is the accept error that means "too many open files".
var syscallEMFILE = syscall.EMFILE
