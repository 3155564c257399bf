package devcluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// Every control-plane process must die with the process that started it, however
// that one ends (Ctrl-C, a crash, SIGKILL): a dev plane left running holds its ports
// and etcd's data directory, and an envtest suite killed by a timeout would leave
// one behind per run. On Linux the kernel does it: a child started with a parent-death
// signal (PR_SET_PDEATHSIG) gets SIGKILL when its parent goes.
//
// The kernel's "parent" is the thread that forked the child, not the process. Go
// ends a thread when a goroutine that locked itself to it (runtime.LockOSThread)
// returns without unlocking, and any goroutine may fork from any thread, so a child
// forked from an ordinary goroutine could be killed long before its parent process
// exits, the moment an unrelated goroutine happened to end on that thread. So every
// child is forked from one goroutine locked to its thread for the life of the
// process: that thread ends only with the process.

var spawner struct {
	once sync.Once
	work chan func()
}

// onSpawnerThread runs f on the thread children are forked from, and returns once
// f has. A panic in f is raised again in the caller.
func onSpawnerThread(f func()) {
	spawner.once.Do(func() {
		spawner.work = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: see above
			for w := range spawner.work {
				w()
			}
		}()
	})
	done := make(chan any, 1)
	spawner.work <- func() {
		defer func() { done <- recover() }()
		f()
	}
	if p := <-done; p != nil {
		panic(p)
	}
}

// alive reports whether pid is a process that has not exited. A zombie (exited,
// not yet reaped by whoever inherited it) holds no ports or files and counts as gone.
func alive(pid int) bool {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may hold
	// spaces or parentheses itself.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// StartChild starts cmd as a child that dies with this process, as the control
// plane's do: with a parent-death signal, forked from the spawner thread, in a
// process group of its own. Tests that run the operator binary use it, so that a
// test killed by its timeout leaves no manager behind.
func StartChild(cmd *exec.Cmd) error {
	cmd.SysProcAttr = childSysProcAttr()
	var err error
	onSpawnerThread(func() { err = cmd.Start() })
	return err
}
