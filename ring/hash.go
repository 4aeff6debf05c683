package ring

import (
	"crypto/md5"
	"fmt"
	"hash/crc32"
	"sort"
)

// HashFunc maps a key to the 32-bit value that is looked up on the ring.
type HashFunc func(key []byte) uint32

// Hash names follow twemproxy's configuration file.
var hashes = map[string]HashFunc{
	"md5":           hashMD5,
	"fnv1a_64":      hashFNV1a64,
	"one_at_a_time": hashOneAtATime,
	"crc32":         hashCRC32,
	"crc32a":        hashCRC32a,
}

// Hashes lists the hash names that LookupHash accepts, sorted.
func Hashes() []string {
	names := make([]string, 0, len(hashes))
	for n := range hashes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// LookupHash returns the hash function with twemproxy's name.
func LookupHash(name string) (HashFunc, error) {
	h, ok := hashes[name]
	if !ok {
		return nil, fmt.Errorf("ring: unknown hash %q (known: %v)", name, Hashes())
	}
	return h, nil
}

// hashMD5 is libketama's: the first four digest bytes, little endian.
func hashMD5(key []byte) uint32 {
	d := md5.Sum(key)
	return md5Word(&d, 0)
}

// md5Word reads the i-th little-endian 32-bit word of a digest, as ketama
// does when it takes four ring points from one digest.
func md5Word(d *[md5.Size]byte, i int) uint32 {
	return uint32(d[4*i+3])<<24 | uint32(d[4*i+2])<<16 | uint32(d[4*i+1])<<8 | uint32(d[4*i])
}

// signed widens a byte the way C widens a plain (signed) char to uint32.
// twemproxy's fnv1a_64 and one_at_a_time read keys through char, so bytes
// >= 0x80 enter the hash sign-extended; matching that keeps placement equal.
func signed(b byte) uint32 { return uint32(int32(int8(b))) }

// hashFNV1a64 is twemproxy's "fnv1a_64": despite the name a 32-bit FNV-1a
// whose basis and prime are the 64-bit constants truncated to 32 bits.
func hashFNV1a64(key []byte) uint32 {
	const basis, prime = uint32(0x84222325), uint32(0x000001b3)
	h := basis
	for _, b := range key {
		h ^= signed(b)
		h *= prime
	}
	return h
}

// hashOneAtATime is Bob Jenkins' one-at-a-time hash as twemproxy has it.
func hashOneAtATime(key []byte) uint32 {
	var h uint32
	for _, b := range key {
		h += signed(b)
		h += h << 10
		h ^= h >> 6
	}
	h += h << 3
	h ^= h >> 11
	h += h << 15
	return h
}

// hashCRC32 is libmemcached's and python-memcached's crc32: the top half of
// the IEEE crc, 15 bits. python-memcached maps 0 to 1 ("or 1"), and so do we.
func hashCRC32(key []byte) uint32 {
	h := (crc32.ChecksumIEEE(key) >> 16) & 0x7fff
	if h == 0 {
		return 1
	}
	return h
}

// hashCRC32a is the full IEEE crc32, as gomemcache's ServerList uses it.
func hashCRC32a(key []byte) uint32 { return crc32.ChecksumIEEE(key) }
