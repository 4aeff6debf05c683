package ring

import (
	"crypto/md5"
	"fmt"
	"math"
	"sort"
	"strconv"
)

// Distribution names follow twemproxy's configuration file.
const (
	Ketama = "ketama"
	Modula = "modula"
)

// ketama constants from libmemcached and twemproxy: 160 points per server of
// average weight, four points taken from each md5 digest.
const (
	pointsPerServer = 160
	pointsPerHash   = 4
)

type point struct {
	value  uint32
	server int
}

// Ring picks a server for a key. It is immutable and safe for concurrent use.
type Ring struct {
	servers []Server
	hash    HashFunc
	points  []point // ketama: sorted by value
	buckets []int   // modula: server indexes, each repeated by its weight
}

// New builds a ring over servers with the named distribution and hash.
func New(servers []Server, distribution, hash string) (*Ring, error) {
	if len(servers) == 0 {
		return nil, fmt.Errorf("ring: no servers")
	}
	h, err := LookupHash(hash)
	if err != nil {
		return nil, err
	}
	r := &Ring{servers: append([]Server(nil), servers...), hash: h}
	for i := range r.servers {
		if r.servers[i].Weight < 1 {
			r.servers[i].Weight = 1
		}
	}
	switch distribution {
	case Ketama:
		r.buildKetama()
	case Modula:
		for i, s := range r.servers {
			for w := 0; w < s.Weight; w++ {
				r.buckets = append(r.buckets, i)
			}
		}
	default:
		return nil, fmt.Errorf("ring: unknown distribution %q (known: %s, %s)", distribution, Ketama, Modula)
	}
	return r, nil
}

// buildKetama lays out the continuum as twemproxy's ketama_update does. The
// point count is computed in float32 on purpose: that is what the C code
// does, and doing it in float64 would move points for some weights.
func (r *Ring) buildKetama() {
	total := 0
	for _, s := range r.servers {
		total += s.Weight
	}
	n := float32(len(r.servers))
	for i, s := range r.servers {
		pct := float32(s.Weight) / float32(total)
		perServer := float32(float32(pct*float32(pointsPerServer))/4) * n
		// C adds 1e-10 in double and floorf rounds back to float.
		count := int(math.Floor(float64(float32(float64(perServer)+0.0000000001)))) * 4
		name := s.ketamaName()
		for j := 0; j < count/pointsPerHash; j++ {
			d := md5.Sum([]byte(name + "-" + strconv.Itoa(j)))
			for k := 0; k < pointsPerHash; k++ {
				r.points = append(r.points, point{value: md5Word(&d, k), server: i})
			}
		}
	}
	// C's qsort leaves equal values in no defined order; order ties by the
	// server's ketama name so the ring is the same whatever the listing order.
	sort.Slice(r.points, func(a, b int) bool {
		pa, pb := r.points[a], r.points[b]
		if pa.value != pb.value {
			return pa.value < pb.value
		}
		return r.servers[pa.server].ketamaName() < r.servers[pb.server].ketamaName()
	})
}

// Pick returns the index into Servers of the server that holds key.
func (r *Ring) Pick(key []byte) int {
	if len(r.servers) == 1 {
		return 0
	}
	h := r.hash(key)
	if r.buckets != nil {
		return r.buckets[h%uint32(len(r.buckets))]
	}
	// The first point at or after h, wrapping round to the first point.
	lo, hi := 0, len(r.points)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r.points[mid].value < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == len(r.points) {
		lo = 0
	}
	return r.points[lo].server
}

// PickN appends to dst the indexes of the first n distinct servers that
// hold key: Pick's server first, then the next distinct servers going on
// round the continuum (modula: the next buckets). It is where a key's
// replicas live; n is capped at the number of servers.
func (r *Ring) PickN(dst []int, key []byte, n int) []int {
	n = min(n, len(r.servers))
	first := r.Pick(key)
	dst = append(dst, first)
	if n == 1 {
		return dst
	}
	// Find where Pick's walk stopped, then keep walking.
	h := r.hash(key)
	var at, size int
	if r.buckets != nil {
		at, size = int(h%uint32(len(r.buckets))), len(r.buckets)
	} else {
		at = sort.Search(len(r.points), func(i int) bool { return r.points[i].value >= h })
		size = len(r.points)
	}
	for step := 1; step < size && len(dst) < n; step++ {
		i := (at + step) % size
		srv := 0
		if r.buckets != nil {
			srv = r.buckets[i]
		} else {
			srv = r.points[i].server
		}
		if !containsInt(dst, srv) {
			dst = append(dst, srv)
		}
	}
	return dst
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Servers returns the servers in the order they were given.
func (r *Ring) Servers() []Server { return r.servers }
