// Package lockservice keeps lock state in memcached for a lockext.Manager,
// so that it holds under faults, and lets proxies in front of the same
// servers cooperate.
//
// Each lock name lives on the first Replicas distinct lock servers that the
// lock ring gives for it; a write counts when a majority of them took it.
// Every lock server carries a marker item, written when the service adopts
// the server, that a flush, a restart or an eviction removes or outdates. A
// new grant counts only if the marker was still the one the service knows
// right after the grant was written (the check rides behind the write on the
// same connection). A server found without its marker has lost state: it
// takes no writes until every grant it could have held has run out (the
// longest ttl), and then gets a new marker. So a lost lock server costs
// availability, never a second grant, and with three replicas it costs
// nothing a client sees.
//
// Proxies register themselves in memcached and agree, by rendezvous hashing
// over the live ones, on a home proxy for each lock name; the others forward
// lock commands for that name there, so all waiters for a name queue in one
// place and a release hands over in-process. Forwarding is an optimisation:
// the truth stays in memcached, and a proxy that cannot reach a name's home
// serves the name itself, at polling speed.
package lockservice
