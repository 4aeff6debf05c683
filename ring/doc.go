// Package ring implements the consistent hashing that decides which memcached
// server holds a key.
//
// The layouts are compatibility promises, not inventions: ketama is built
// exactly as libmemcached and twemproxy build it, and modula exactly as
// python-memcached's buckets and gomemcache's ServerList pick a server, so a
// cache stays warm when the proxy replaces client-side sharding or twemproxy.
//
// A Ring is immutable. Lookups take no lock and allocate nothing; a changed
// server list makes a new Ring.
package ring
