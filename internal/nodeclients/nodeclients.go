// Package nodeclients runs public Node.js clients of Orderly's wires against a
// test's servers: the mq-http SDK (@aliyunmq/mq-http-sdk), the RocketMQ 5.x gRPC
// client (rocketmq-client-nodejs) and ali-ons (RocketMQ 4.x remoting, as the Aliyun
// ONS client speaks it), at the versions js/package-lock.json pins. The
// Go tests of each endpoint drive the Go clients; these catch what another
// language's client does differently (CDATA in every request body, its own TLS
// roots, its own order of calls, timer properties the Go client does not send).
//
// The clients are installed with `npm ci` on first use, into the user's cache
// directory under a name that changes with the lock file, and reused after that.
// Installing needs npm and the npm registry; a test that needs them fails, rather
// than skips, without them.
package nodeclients

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

//go:embed js/package.json js/package-lock.json js/*.js
var files embed.FS

var installed struct {
	once sync.Once
	dir  string
	err  error
}

// Run runs one of js/*.js with node, its environment the test's plus env and a
// home of its own (the gRPC client writes its logs under $HOME), and fails t with
// the script's output unless it exits zero within timeout.
func Run(t testing.TB, script string, env map[string]string, timeout time.Duration) {
	t.Helper()
	installed.once.Do(func() { installed.dir, installed.err = install() })
	if installed.err != nil {
		t.Fatalf("installing the Node.js clients: %v", installed.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(installed.dir, script))
	cmd.Dir = installed.dir
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, out)
	}
	t.Logf("node %s:\n%s", script, out)
}

// install puts the scripts and the clients they need in a directory named for
// their contents, and returns it. Two test processes may install at once: each
// builds its own copy and renames it into place, and the loser uses the winner's.
func install() (string, error) {
	sum := sha256.New()
	err := fs.WalkDir(files, "js", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(path)
		fmt.Fprintf(sum, "%s %d\n", path, len(b))
		sum.Write(b)
		return err
	})
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "orderly-nodeclients", hex.EncodeToString(sum.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "install-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	entries, err := files.ReadDir("js")
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		b, err := files.ReadFile("js/" + e.Name())
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(tmp, e.Name()), b, 0o644); err != nil {
			return "", err
		}
	}
	// No install scripts: none of the clients needs one to run (protobufjs's only
	// prints a notice).
	npm := exec.Command("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")
	npm.Dir = tmp
	if out, err := npm.CombinedOutput(); err != nil {
		return "", fmt.Errorf("npm ci: %w\n%s", err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, "node_modules")); statErr == nil {
			return dir, nil // another process installed it first
		}
		return "", errors.Join(fmt.Errorf("installing into %s", dir), err)
	}
	return dir, nil
}
