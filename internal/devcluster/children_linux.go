package devcluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// envtest starts etcd and kube-apiserver itself, with a SysProcAttr of its own that
// has no parent-death signal and cannot be changed; only the binary's path can. So
// that path is a link to the running binary, in a directory named linkDirName: the
// binary, started through it, finds a spec next to the link (<link>.json), sets the
// parent-death signal on itself and execs the real binary in its place. The signal
// survives exec, the pid stays the same, and envtest sees the process it started.

const linkDirName = "exec"

type childSpec struct {
	// Path is the binary to become.
	Path string `json:"path"`
	// Parent is the pid of the process that wrote the spec and starts the child.
	Parent int `json:"parent"`
}

// RunIfChild turns this process into a control-plane binary if it was started
// through one of the links Start makes, and never returns then; otherwise it returns
// at once. main, and TestMain in every package that starts a dev control plane,
// call it first thing.
func RunIfChild() {
	if filepath.Base(filepath.Dir(os.Args[0])) != linkDirName {
		return
	}
	raw, err := os.ReadFile(os.Args[0] + ".json")
	if err != nil {
		return // a directory of that name, but not one of ours
	}
	var spec childSpec
	if err := json.Unmarshal(raw, &spec); err != nil || spec.Path == "" {
		fmt.Fprintf(os.Stderr, "devcluster: bad child spec %s.json: %v\n", os.Args[0], err)
		os.Exit(2)
	}
	// The parent-death signal belongs to the calling thread, and exec keeps only the
	// thread that calls it: both calls must be made on one thread.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "devcluster: PR_SET_PDEATHSIG: %v\n", err)
		os.Exit(2)
	}
	// A parent that died before the call above sends no signal; this process was
	// then handed to another, and must not start orphaned.
	if os.Getppid() != spec.Parent {
		os.Exit(2)
	}
	argv := append([]string{spec.Path}, os.Args[1:]...)
	err = syscall.Exec(spec.Path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "devcluster: exec %s: %v\n", spec.Path, err)
	os.Exit(2)
}

// linkBinary returns the path to start the binary at path through, so that it dies
// with this process: a link in dir/exec to this process's own binary, with its spec.
func linkBinary(dir, path string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	// The child may run in another working directory.
	if path, err = filepath.Abs(path); err != nil {
		return "", err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return "", err
	}
	linkDir := filepath.Join(dir, linkDirName)
	if err := os.MkdirAll(linkDir, 0o700); err != nil {
		return "", err
	}
	link := filepath.Join(linkDir, filepath.Base(path))
	spec, err := json.Marshal(childSpec{Path: path, Parent: os.Getpid()})
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(link+".json", spec, 0o600); err != nil {
		return "", err
	}
	_ = os.Remove(link) // the binary of an earlier run, or another build of it
	if err := os.Symlink(self, link); err != nil {
		return "", err
	}
	return link, nil
}

// childSysProcAttr is for children this package starts itself: their own process
// group (so a terminal's Ctrl-C reaches only the manager, which stops them in
// order) and SIGKILL when the parent thread, the spawner's, goes.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
