package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// Every duration flag reads a Go duration ("1.5s", "200ms", "2h") or a
// plain number, with one rule for the plain number: a lifetime (ttl) is in
// seconds, as in the lock protocol's ttl; every other duration is in
// milliseconds, as twemproxy's timeouts and the lock protocol's wait_ms.
const (
	unitMs  = "a duration such as 1.5s, or a plain number of milliseconds"
	unitSec = "a duration such as 90s or 1h, or a plain number of seconds"
)

// duration is a flag value that reads both forms; unit is what a plain
// number counts.
type duration struct {
	d    time.Duration
	unit time.Duration
}

func (v *duration) Set(s string) error {
	d, err := parseDuration(s, v.unit)
	if err != nil {
		return err
	}
	v.d = d
	return nil
}

func (v *duration) String() string { return v.d.String() }

// parseDuration reads s as a Go duration or as a plain number of unit.
func parseDuration(s string, unit time.Duration) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		d = time.Duration(n * float64(unit))
	} else if d, err = time.ParseDuration(s); err != nil {
		return 0, fmt.Errorf("%q is not a duration: write it as 1.5s, 200ms or 2m, or as a plain number of %s", s, unitName(unit))
	}
	if d < 0 {
		return 0, fmt.Errorf("%q: a duration cannot be negative", s)
	}
	return d, nil
}

func unitName(unit time.Duration) string {
	if unit == time.Second {
		return "seconds"
	}
	return "milliseconds"
}

// msFlag is a duration flag whose plain numbers are milliseconds.
func msFlag(name string, value time.Duration, envName, usage string) cli.Flag {
	return durationFlag(name, value, time.Millisecond, envName, usage+" ("+unitMs+")")
}

// secFlag is a lifetime flag whose plain numbers are seconds.
func secFlag(name string, value time.Duration, envName, usage string) cli.Flag {
	return durationFlag(name, value, time.Second, envName, usage+" ("+unitSec+")")
}

func durationFlag(name string, value, unit time.Duration, envName, usage string) cli.Flag {
	f := &cli.GenericFlag{Name: name, Usage: usage, Value: &duration{d: value, unit: unit}}
	if envName != "" {
		f.EnvVars = env(envName)
	}
	return f
}

// durationOf reads a flag made by msFlag or secFlag.
func durationOf(cc *cli.Context, name string) time.Duration {
	return cc.Generic(name).(*duration).d
}

// secondsOf reads a lifetime flag as whole seconds.
func secondsOf(cc *cli.Context, name string) (int, error) {
	d := durationOf(cc, name)
	if d%time.Second != 0 {
		return 0, fmt.Errorf("--%s %s: must be whole seconds", name, d)
	}
	return int(d / time.Second), nil
}
