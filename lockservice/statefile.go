package lockservice

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The state file closes the one gap the markers leave: every lock server
// holding a name restarts empty while every proxy restarts too (a rack
// losing power, a host running both). Nothing in memcached then says the
// servers held grants, and the proxies would take them for new ones while
// leases granted before could still run. Each proxy keeps, on its own disk,
// until when grants on each lock server may run; a server found without a
// marker before then recovers until then.
//
// The file has a line per lock server, "<address> <unix milliseconds>",
// and is replaced whole (written beside, synced, renamed) once a second.

const stateHeader = "# memcachedlock: until when grants on each lock server may still run (unix ms); written by the proxy\n"

// loadState reads the state file; a missing one is empty.
func loadState(path string) (map[string]time.Time, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	until := make(map[string]time.Time)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		ms, err := strconv.ParseInt(f[len(f)-1], 10, 64)
		if len(f) != 2 || err != nil {
			return nil, fmt.Errorf("%s:%d: want \"<address> <unix ms>\", got %q", path, n, line)
		}
		until[f[0]] = time.UnixMilli(ms)
	}
	return until, nil
}

// saveState replaces the state file with until.
func saveState(path string, addrs []string, until map[string]time.Time) error {
	var b bytes.Buffer
	b.WriteString(stateHeader)
	for _, addr := range addrs {
		if t := until[addr]; !t.IsZero() {
			fmt.Fprintf(&b, "%s %d\n", addr, t.UnixMilli())
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone after the rename; cleans up after a failure
	if _, err := tmp.Write(b.Bytes()); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// mayHoldUntil is until when grants on r may run as far as this proxy
// knows: while r is trusted, any grant made before the next save ends
// within the longest ttl after it (a second for its item, a second for the
// save's period); while it recovers, at the recovery's end; otherwise
// what the state file said.
func (r *replica) mayHoldUntil(now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.remembered
	if r.known != "" && r.differs == "" {
		t = later(t, now.Add(r.hold+2*time.Second))
	}
	return later(t, r.until)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// saveState writes the state file, when there is one; a failure is logged
// once until a save succeeds again.
func (s *Service) saveState() {
	if s.cfg.StateFile == "" {
		return
	}
	now := time.Now()
	addrs := make([]string, len(s.replicas))
	until := make(map[string]time.Time, len(s.replicas))
	for i, r := range s.replicas {
		addrs[i] = r.addr
		until[r.addr] = r.mayHoldUntil(now)
	}
	err := saveState(s.cfg.StateFile, addrs, until)
	switch {
	case err != nil && !s.stateFailing:
		s.cfg.Logger.Error("cannot write the lock state file: a restart of every lock server together with this proxy would go unnoticed",
			"file", s.cfg.StateFile, "err", err)
	case err == nil && s.stateFailing:
		s.cfg.Logger.Info("lock state file written again", "file", s.cfg.StateFile)
	}
	s.stateFailing = err != nil
}
