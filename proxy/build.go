package proxy

import "runtime/debug"

// Commit is the revision the binary was built from. make release and
// make build stamp it (-ldflags "-X .../proxy.Commit=..."); otherwise Go's
// own build information is asked, which knows it when built in a checkout.
var Commit = ""

// BuildCommit returns Commit, the revision Go recorded, or "unknown".
func BuildCommit() string {
	if Commit != "" {
		return Commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" && dirty {
			rev += "-dirty"
		}
		if rev != "" {
			return rev
		}
	}
	return "unknown"
}
