package main

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// ringLock is the ceiling: an in-memory FIFO lock, in one process, or for
// clients spread over several, where it is the busiest a lock can be here
// when its clients sit behind different processes, whatever protocol those
// processes speak. Process 0 keeps the
// one FIFO queue (so the lock stays first come, first served); it tells
// the holder's process who is next, and that process hands the lock
// straight to the next holder's process on the holder's unlock, telling
// process 0 behind it. A handoff between clients of one process crosses
// no other process, one between two processes crosses one: the fewest
// any such lock can cross. In memory, without faults: a yardstick, not a
// lock service.
//
// Messages between the processes, one line each:
//
//	Q <proc> <id>           to 0: a client of proc asks (id is proc's)
//	G <id> <fence>          to a client's process: the client holds fence
//	N <fence> <proc> <id>   to the holder's process: who is next after fence
//	R <fence> <handed>      to 0: fence released; handed 1 if passed on by N
type ringLock struct {
	me    int
	addrs []string

	mu      sync.Mutex
	links   map[int]*ringLink
	nextID  uint64
	waiting map[uint64]chan uint64 // this process's clients waiting, by id
	next    map[uint64]ringWaiter  // fence held here -> who is next, as told by 0

	// Process 0 only.
	queue []ringWaiter // queue[0] holds the lock
	fence uint64       // the holder's
	// early are releases that overtook the release before them (they come
	// from different processes): fence -> handed.
	early map[uint64]bool
}

type ringWaiter struct {
	proc int
	id   uint64
}

// ringLink is the write side of a connection to another process.
type ringLink struct {
	mu sync.Mutex
	nc net.Conn
}

func newRingLock(me int, addrs []string) *ringLock {
	return &ringLock{me: me, addrs: addrs, links: make(map[int]*ringLink),
		waiting: make(map[uint64]chan uint64), next: make(map[uint64]ringWaiter), early: make(map[uint64]bool)}
}

// send writes one message to process p, dialling it the first time.
func (r *ringLock) send(p int, format string, args ...any) {
	r.mu.Lock()
	l := r.links[p]
	if l == nil {
		l = &ringLink{}
		r.links[p] = l
	}
	r.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nc == nil {
		nc, err := net.Dial("tcp", r.addrs[p])
		if err != nil {
			panic(err) // a yardstick: a broken run is no measurement
		}
		fmt.Fprintf(nc, "peer %d\r\n", r.me)
		l.nc = nc
	}
	if _, err := fmt.Fprintf(l.nc, format+"\r\n", args...); err != nil {
		panic(err)
	}
}

// serve serves one connection: a client's lock and unlock lines, or
// another process's messages after its "peer" line.
func (r *ringLock) serve(nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	granted := make(chan uint64, 1)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "peer":
			r.servePeer(br)
			return
		case "lock":
			r.mu.Lock()
			r.nextID++
			id := r.nextID
			r.waiting[id] = granted
			r.mu.Unlock()
			r.ask(ringWaiter{r.me, id})
			fmt.Fprintf(nc, "LOCKED %d 10 1\r\n", <-granted)
		case "unlock":
			fence, _ := strconv.ParseUint(f[len(f)-1], 10, 64)
			r.unlock(fence)
			nc.Write([]byte("UNLOCKED 0\r\n"))
		default:
			nc.Write([]byte("ERROR\r\n"))
		}
	}
}

func (r *ringLock) servePeer(br *bufio.Reader) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		n := func(i int) uint64 { v, _ := strconv.ParseUint(f[i], 10, 64); return v }
		switch f[0] {
		case "Q":
			r.enqueue(ringWaiter{int(n(1)), n(2)})
		case "G":
			r.deliver(n(1), n(2))
		case "N":
			r.mu.Lock()
			r.next[n(1)] = ringWaiter{int(n(2)), n(3)}
			r.mu.Unlock()
		case "R":
			r.released(n(1), f[2] == "1")
		}
	}
}

// ask puts a client of this process in the queue at process 0.
func (r *ringLock) ask(w ringWaiter) {
	if r.me == 0 {
		r.enqueue(w)
		return
	}
	r.send(0, "Q %d %d", w.proc, w.id)
}

// deliver gives a waiting client of this process its grant.
func (r *ringLock) deliver(id, fence uint64) {
	r.mu.Lock()
	ch := r.waiting[id]
	delete(r.waiting, id)
	r.mu.Unlock()
	if ch == nil {
		panic(fmt.Sprintf("fence %d granted to %d, who does not wait", fence, id))
	}
	ch <- fence
}

// grant gives fence to w, at its process.
func (r *ringLock) grant(w ringWaiter, fence uint64) {
	if w.proc == r.me {
		r.deliver(w.id, fence)
		return
	}
	r.send(w.proc, "G %d %d", w.id, fence)
}

// unlock releases fence, held by a client of this process: straight to
// the next holder when process 0 has said who that is.
func (r *ringLock) unlock(fence uint64) {
	r.mu.Lock()
	w, known := r.next[fence]
	delete(r.next, fence)
	r.mu.Unlock()
	if known {
		r.grant(w, fence+1)
		runtime.Gosched() // the new holder's reply first
	}
	handed := map[bool]int{true: 1, false: 0}[known]
	if r.me == 0 {
		r.released(fence, known)
		return
	}
	r.send(0, "R %d %d", fence, handed)
}

// enqueue (process 0) queues w, granting it the lock when it is free.
func (r *ringLock) enqueue(w ringWaiter) {
	r.mu.Lock()
	r.queue = append(r.queue, w)
	first := len(r.queue) == 1
	if first {
		r.fence++
	}
	fence := r.fence
	second := len(r.queue) == 2
	r.mu.Unlock()
	if first {
		r.grant(w, fence)
	}
	if second {
		r.tellNext()
	}
}

// released (process 0) ends the holder's grant; handed says its process
// passed the lock on to the next in the queue already. The next holder's
// own release may come first, from its process: it waits for this one.
func (r *ringLock) released(fence uint64, handed bool) {
	r.mu.Lock()
	if fence != r.fence {
		r.early[fence] = handed
		r.mu.Unlock()
		return
	}
	r.queue = r.queue[1:]
	r.fence = fence + 1
	grant := !handed && len(r.queue) > 0
	var head ringWaiter
	if len(r.queue) > 0 {
		head = r.queue[0]
	}
	nextHanded, overtaken := r.early[fence+1]
	delete(r.early, fence+1)
	r.mu.Unlock()
	if grant {
		r.grant(head, fence+1)
	}
	r.tellNext()
	if overtaken {
		r.released(fence+1, nextHanded)
	}
}

// tellNext (process 0) tells the holder's process who is next.
func (r *ringLock) tellNext() {
	r.mu.Lock()
	if len(r.queue) < 2 {
		r.mu.Unlock()
		return
	}
	holder, next, fence := r.queue[0], r.queue[1], r.fence
	r.mu.Unlock()
	if holder.proc == r.me {
		r.mu.Lock()
		r.next[fence] = next
		r.mu.Unlock()
		return
	}
	r.send(holder.proc, "N %d %d %d", fence, next.proc, next.id)
}
