package proxy

import (
	"bufio"
	"fmt"
)

// reply is one client command's answer, in command order. write blocks
// until the answer is known.
type reply interface {
	write(w *bufio.Writer)
}

// readyReply is an answer whose bytes the proxy has in hand when it
// queues it: one of the words below, or a line made for this command.
type readyReply []byte

func (r readyReply) write(w *bufio.Writer) { w.Write(r) }

// The proxy's own words, made once, as memcached words them. Server
// replies pass through as the server sent them; only these and the lines
// made per command (lock replies, binary packets) are the proxy's.
var (
	crlf      = []byte("\r\n")
	prefixVA  = []byte("VA ")
	prefixVAL = []byte("VALUE ")

	replyEND = readyReply("END\r\n")
	replyEN  = readyReply("EN\r\n")
	replyMN  = readyReply("MN\r\n")
	replyOK  = readyReply("OK\r\n")

	replyERROR       = readyReply("ERROR\r\n")
	replyFormat      = readyReply("CLIENT_ERROR bad command line format\r\n")
	replyDeleteUsage = readyReply("CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n")
	replyKeyDecode   = readyReply("CLIENT_ERROR error decoding key\r\n")
	replyLineTooLong = readyReply("CLIENT_ERROR line too long\r\n")
	replyBadChunk    = readyReply("CLIENT_ERROR bad data chunk\r\n")
	replyNoReplyErr  = readyReply("CLIENT_ERROR noreply not allowed\r\n")
	replyReserved    = readyReply("CLIENT_ERROR key is reserved for locks\r\n")
	replyTooLarge    = readyReply("SERVER_ERROR object too large for cache\r\n")
	replyTooManyConn = readyReply("SERVER_ERROR too many open connections\r\n")
	replyNoShutdown  = readyReply("ERROR: shutdown not enabled\r\n")

	// A proxy that forwards lock commands here is greeted with this.
	replyPeer = readyReply("PEER\r\n")

	// Lock replies that carry no numbers.
	replyNotFound     = readyReply("NOT_FOUND\r\n")
	replyNotOwner     = readyReply("NOT_OWNER\r\n")
	replyModeMismatch = readyReply("CLIENT_ERROR lock is held in another mode\r\n")
	replyRecovering   = readyReply("SERVER_ERROR lock server recovering\r\n")
	replyLocksDiffer  = readyReply("SERVER_ERROR lock servers differ between proxies\r\n")
	replyShuttingDown = readyReply("SERVER_ERROR proxy shutting down\r\n")
	replyClientGone   = readyReply("SERVER_ERROR client gone\r\n")
	replyLocksDown    = readyReply("SERVER_ERROR lock server unavailable\r\n")
)

// serverError is the reply for a call the server could not answer.
func serverError(err error) []byte { return fmt.Appendf(nil, "SERVER_ERROR %v\r\n", err) }
