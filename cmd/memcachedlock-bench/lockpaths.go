package main

import (
	"fmt"
	"slices"
	"strconv"
	"time"
)

// span is one grant as its worker saw it: LOCKED read, unlock sent.
type span struct {
	worker             int
	granted, unlocking time.Time
}

// path is one way a handoff can go between proxies, and the gaps (the
// releaser's unlock sent to the next holder's LOCKED read) of the handoffs
// that went that way. Every lock name has one home proxy, where its
// waiters queue: an unlock sent to another proxy crosses to the home, and
// a grant for a client of another proxy crosses back, each crossing a
// process more on the lock's critical path.
type path struct {
	name string
	gaps []time.Duration
}

// pathNames are the ways, by how many proxies other than the home the
// handoff crosses.
var pathNames = [...]string{"home → home", "other → home", "home → other", "other → same", "other → another"}

// handoffPaths sorts the handoffs of a run through n proxies, worker i on
// proxy i%n and the lock's home at proxy home, by the way they went.
func handoffPaths(spans []span, n, home int) []path {
	if home < 0 {
		return nil
	}
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b span) int { return a.granted.Compare(b.granted) })
	paths := make([]path, len(pathNames))
	for i, name := range pathNames {
		paths[i].name = name
	}
	for i := 1; i < len(spans); i++ {
		from, to := spans[i-1].worker%n, spans[i].worker%n
		var way int
		switch {
		case from == home && to == home:
			way = 0
		case to == home:
			way = 1
		case from == home:
			way = 2
		case from == to:
			way = 3
		default:
			way = 4
		}
		paths[way].gaps = append(paths[way].gaps, spans[i].granted.Sub(spans[i-1].unlocking))
	}
	return paths
}

// homeOf finds the proxy that served the lock for the others: the one
// that took the most forwarded lock commands. With one proxy, that one.
func homeOf(addrs []string) int {
	home, most := -1, -1
	for i, a := range addrs {
		n, err := strconv.Atoi(statOf(a, "proxy_lock_forwarded_in"))
		if err == nil && n > most {
			home, most = i, n
		}
	}
	return home
}

// printPathTable shows, for the runs through proxies, how long a handoff
// took by the way it went, and how many went each way.
func printPathTable(results []lockResult) {
	if !slices.ContainsFunc(results, func(r lockResult) bool { return r.paths != nil }) {
		return
	}
	fmt.Printf("\nhandoff gap by the way it went (the releaser's unlock sent to the next holder's LOCKED read; median, and share of handoffs):\n")
	fmt.Printf("| %-26s |", "scheme")
	for _, name := range pathNames {
		fmt.Printf(" %17s |", name)
	}
	fmt.Printf("\n|%s|", dashes(28))
	for range pathNames {
		fmt.Printf("%s|", dashes(19))
	}
	fmt.Println()
	for _, r := range results {
		if r.paths == nil {
			continue
		}
		total := 0
		for _, p := range r.paths {
			total += len(p.gaps)
		}
		fmt.Printf("| %-26s |", r.name)
		for _, p := range r.paths {
			if len(p.gaps) == 0 {
				fmt.Printf(" %17s |", "-")
				continue
			}
			slices.Sort(p.gaps)
			cell := fmt.Sprintf("%s (%.0f%%)", ms(pct(p.gaps, 50)), 100*float64(len(p.gaps))/float64(max(total, 1)))
			fmt.Printf(" %17s |", cell)
		}
		fmt.Println()
	}
}
