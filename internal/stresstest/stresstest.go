// Package stresstest runs the seeds of a randomized model test: a few
// seconds of them, one at a time, in make test; with <ENV>=<duration>
// that long, several at a time, failing on known defects too; with
// <ENV>_SEED=n seed n alone.
package stresstest

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// Outcome is what one seed's run found.
type Outcome struct {
	Grants  int
	Notes   []string // known defects seen: logged
	Failure string   // what the run found wrong; "" when it passed
	Summary string   // the run in a line, logged with -v
}

// Run runs seeds from a random one (or <env>_SEED) until its budget is
// spent or a seed fails. run gets the seed, whether the run is a long one
// (<env> set: known defects fail it too) and whether it runs alone (one
// at a time: it may count goroutines).
func Run(t *testing.T, env string, longWorkers int, run func(seed uint64, long, alone bool) Outcome) {
	budget, workers, long := 5*time.Second, 1, false
	if v := os.Getenv(env); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", env, v, err)
		}
		budget, workers, long = d, longWorkers, true
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(env + "_SEED"); v != "" {
		if _, err := fmt.Sscan(v, &seed); err != nil {
			t.Fatalf("%s_SEED=%q: %v", env, v, err)
		}
		budget, workers = 0, 1
	}
	var mu sync.Mutex
	grants, seeds := 0, 0
	end := time.Now().Add(budget)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if t.Failed() || (seeds > 0 && !time.Now().Before(end)) {
					mu.Unlock()
					return
				}
				s := seed
				seed++
				seeds++
				mu.Unlock()
				o := run(s, long, workers == 1)
				mu.Lock()
				grants += o.Grants
				for _, n := range o.Notes {
					t.Logf("seed %d: %s", s, n)
				}
				if o.Failure != "" {
					t.Errorf("seed %d (%s_SEED=%d to run it again): %s", s, env, s, o.Failure)
				} else if testing.Verbose() {
					t.Logf("seed %d: %s", s, o.Summary)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d seeds, %d grants", seeds, grants)
}
