// Package proxy implements the memcached text-protocol proxy: it accepts
// client connections, parses their commands, routes each key to the memcached
// server the ring picks, and writes the replies back in command order. The
// lock commands are parsed here and carried out by package lockext.
//
// Server connections are pooled and shared: every client request to a server
// is pipelined onto one of a few long-lived connections, and replies are
// matched to requests by their order.
package proxy
