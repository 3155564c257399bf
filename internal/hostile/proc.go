// Package hostile runs one Orderly process under hostile and careless clients
// while a well-behaved tenant works, and measures what the attack costs that
// tenant and the process (hostile_test.go). This file reads the process's
// figures from /proc and its metrics endpoint; attack.go holds the attackers and
// ledger.go the good tenant's accounting.
package hostile

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Memory is a process's resident set, now and at its peak, in bytes.
type Memory struct{ RSS, HWM int64 }

// ReadMemory reads VmRSS and VmHWM of pid from /proc/<pid>/status.
func ReadMemory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	defer f.Close()
	var m Memory
	s := bufio.NewScanner(f)
	for s.Scan() {
		for _, field := range []struct {
			name string
			v    *int64
		}{{"VmRSS:", &m.RSS}, {"VmHWM:", &m.HWM}} {
			if rest, ok := strings.CutPrefix(s.Text(), field.name); ok {
				kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if err != nil {
					return Memory{}, fmt.Errorf("%s %q: %w", field.name, rest, err)
				}
				*field.v = kib << 10
			}
		}
	}
	if err := s.Err(); err != nil {
		return Memory{}, err
	}
	if m.RSS == 0 || m.HWM == 0 {
		return Memory{}, fmt.Errorf("/proc/%d/status has no VmRSS or VmHWM", pid)
	}
	return m, nil
}

// Sockets is what a process holds open: every socket descriptor, and the TCP
// connections (not listeners) on each of the local ports asked about.
type Sockets struct {
	FDs    int
	ByPort map[int]int
}

// Conns is the connections on the given ports together.
func (s Sockets) Conns() int {
	n := 0
	for _, c := range s.ByPort {
		n += c
	}
	return n
}

func (s Sockets) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d socket fds", s.FDs)
	for p, c := range s.ByPort {
		fmt.Fprintf(&b, ", %d on :%d", c, p)
	}
	return b.String()
}

// ReadSockets counts pid's socket descriptors (/proc/<pid>/fd links "socket:[inode]")
// and, by matching their inodes with /proc/net/tcp and tcp6, the connections among
// them whose local port is one of ports. A connection accepted by the kernel but
// not yet by the process is not counted, and neither is one the process has
// closed (TIME_WAIT and the other states the kernel keeps alone): what is counted
// is what the process holds.
func ReadSockets(pid int, ports ...int) (Sockets, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return Sockets{}, err
	}
	inodes := map[string]bool{}
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed since the listing
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	s := Sockets{FDs: len(inodes), ByPort: map[int]int{}}
	wanted := map[int]bool{}
	for _, p := range ports {
		wanted[p] = true
		s.ByPort[p] = 0
	}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return Sockets{}, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the column names
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] || fields[3] == tcpListen {
				continue
			}
			_, portHex, _ := strings.Cut(fields[1], ":")
			port, err := strconv.ParseInt(portHex, 16, 32)
			if err == nil && wanted[int(port)] {
				s.ByPort[int(port)]++
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return Sockets{}, err
		}
	}
	return s, nil
}

// tcpListen is the LISTEN state in /proc/net/tcp.
const tcpListen = "0A"

// metricsClient keeps no connection open between scrapes, so that scraping adds
// nothing to the sockets counted.
var metricsClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// ReadGoroutines reads go_goroutines from a Prometheus text endpoint (the
// controller-runtime metrics server, whose registry has the Go collector).
func ReadGoroutines(ctx context.Context, metricsURL string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, err
	}
	res, err := metricsClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, res.Body)
		return 0, fmt.Errorf("%s: %s", metricsURL, res.Status)
	}
	s := bufio.NewScanner(res.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "go_goroutines "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				return 0, fmt.Errorf("go_goroutines %q: %w", rest, err)
			}
			return int(v), nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no go_goroutines", metricsURL)
}
