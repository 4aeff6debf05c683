package lockservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// fakeMC is a memcached that speaks the few meta commands the lock service
// sends, in memory, with switches for the faults under test: down, slow,
// flush, evict. The integration tests run the same service against real
// memcached.
type fakeMC struct {
	mu        sync.Mutex
	items     map[string]fakeItem
	cas       uint64
	evictions int64
	evictable bool
	down      bool
	delay     time.Duration      // before each answer
	gate      chan struct{}      // when set, commands wait until it is closed
	stall     func(batch []byte) // when set, runs before each batch is carried out
}

type fakeItem struct {
	value   []byte
	cas     uint64
	flags   uint64
	expires time.Time // zero: never
}

func newFakeMC() *fakeMC { return &fakeMC{items: make(map[string]fakeItem)} }

var errFakeDown = errors.New("fake memcached is down")

func (f *fakeMC) flush() {
	f.mu.Lock()
	f.items = make(map[string]fakeItem)
	f.mu.Unlock()
}

// evict drops one item and counts an eviction, as memcached under memory
// pressure does.
func (f *fakeMC) evict(key string) {
	f.mu.Lock()
	delete(f.items, key)
	f.evictions++
	f.mu.Unlock()
}

// put stores an item as another writer would have.
func (f *fakeMC) put(key string, value []byte, cas uint64) {
	f.mu.Lock()
	f.items[key] = fakeItem{value: value, cas: cas}
	f.mu.Unlock()
}

func (f *fakeMC) set(down bool, delay time.Duration) {
	f.mu.Lock()
	f.down, f.delay = down, delay
	f.mu.Unlock()
}

// hold keeps every command from now on waiting until the returned
// channel is closed (or its caller gives up): a server paused at a chosen
// moment, which the test resumes at another.
func (f *fakeMC) hold() chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = make(chan struct{})
	return f.gate
}

// stallOn holds back, until the returned func is called, the batches that
// pick chooses; the others go through.
func (f *fakeMC) stallOn(pick func(batch []byte) bool) (resume func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	f.stall = func(b []byte) {
		if pick(b) {
			<-ch
		}
	}
	f.mu.Unlock()
	return sync.OnceFunc(func() { close(ch) })
}

// within waits until cond holds, or d has passed, looking every few
// milliseconds: for what the fake servers will hold once a write late on
// its way lands. The caller checks cond again where it must hold.
func within(d time.Duration, cond func() bool) {
	for end := time.Now().Add(d); !cond() && time.Now().Before(end); {
		time.Sleep(2 * time.Millisecond)
	}
}

// value is what the server holds under key; nil when nothing.
func (f *fakeMC) value(key string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	it, _ := f.live(key)
	return it.value
}

func (f *fakeMC) has(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.live(key)
	return ok
}

func (f *fakeMC) live(key string) (fakeItem, bool) {
	it, ok := f.items[key]
	if ok && !it.expires.IsZero() && time.Now().After(it.expires) {
		delete(f.items, key)
		return fakeItem{}, false
	}
	return it, ok
}

func (f *fakeMC) Exchange(ctx context.Context, batch, reply []byte) ([]byte, error) {
	f.mu.Lock()
	down, delay, gate, stall := f.down, f.delay, f.gate, f.stall
	f.mu.Unlock()
	if down {
		return nil, errFakeDown
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	if stall != nil {
		stall(batch)
	}
	if delay > 0 {
		// Like a paused server: the commands are carried out when it
		// resumes, or (to end the test) when nobody waits any more.
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()

	var out bytes.Buffer
	for len(batch) > 0 {
		i := bytes.Index(batch, []byte("\r\n"))
		line := string(batch[:i])
		batch = batch[i+2:]
		w := strings.Fields(line)
		switch w[0] {
		case "stats":
			if len(w) > 1 { // settings
				fmt.Fprintf(&out, "STAT evictions %s\r\nEND\r\n", map[bool]string{true: "on", false: "off"}[f.evictable])
			} else {
				fmt.Fprintf(&out, "STAT uptime 100000\r\nSTAT cmd_flush 0\r\nSTAT evictions %d\r\nEND\r\n", f.evictions)
			}
		case "mg":
			it, ok := f.live(w[1])
			if !ok {
				out.WriteString("EN\r\n")
				continue
			}
			fmt.Fprintf(&out, "VA %d c%d", len(it.value), it.cas)
			if strings.Contains(line, " f") {
				fmt.Fprintf(&out, " f%d", it.flags)
			}
			if strings.Contains(line, " t") {
				ttl := -1
				if !it.expires.IsZero() {
					ttl = int(time.Until(it.expires).Seconds() + 0.5)
				}
				fmt.Fprintf(&out, " t%d", ttl)
			}
			fmt.Fprintf(&out, "\r\n%s\r\n", it.value)
		case "ms":
			n, _ := strconv.Atoi(w[2])
			value := append([]byte(nil), batch[:n]...)
			batch = batch[n+2:]
			it, exists := f.live(w[1])
			var expires time.Time
			var flags uint64
			status := ""
			for _, fl := range w[3:] {
				switch {
				case fl[0] == 'F':
					flags, _ = strconv.ParseUint(fl[1:], 10, 32)
				case fl == "ME" && exists:
					status = "NS"
				case fl[0] == 'C' && !exists:
					status = "NF"
				case fl[0] == 'C' && fl[1:] != strconv.FormatUint(it.cas, 10):
					status = "EX"
				case fl[0] == 'T':
					s, _ := strconv.Atoi(fl[1:])
					if s > 0 {
						expires = time.Now().Add(time.Duration(s) * time.Second)
					}
				}
			}
			if status != "" {
				out.WriteString(status + "\r\n")
				continue
			}
			f.cas++
			f.items[w[1]] = fakeItem{value: value, cas: f.cas, flags: flags, expires: expires}
			fmt.Fprintf(&out, "HD c%d\r\n", f.cas)
		case "md":
			it, ok := f.live(w[1])
			switch {
			case !ok:
				out.WriteString("NF\r\n")
			case w[2][1:] != strconv.FormatUint(it.cas, 10):
				out.WriteString("EX\r\n")
			default:
				delete(f.items, w[1])
				out.WriteString("HD\r\n")
			}
		default:
			out.WriteString("ERROR\r\n")
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err // carried out, but too late for the caller
	}
	return append(reply, out.Bytes()...), nil
}
