package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"testing"
	"testing/iotest"
	"time"

	"github.com/memcachedlock/memcachedlock/internal/testmc"
)

// binReq builds one binary request.
func binReq(op byte, key, extras, value string, opaque uint32) []byte {
	h := make([]byte, 24)
	h[0], h[1] = binRequestMagic, op
	binary.BigEndian.PutUint16(h[2:], uint16(len(key)))
	h[4] = byte(len(extras))
	binary.BigEndian.PutUint32(h[8:], uint32(len(extras)+len(key)+len(value)))
	binary.BigEndian.PutUint32(h[12:], opaque)
	return append(append(append(h, extras...), key...), value...)
}

// readAll reads requests until an error, skipping values, and describes
// each; the same stream must read the same however it arrives.
func readAll(r io.Reader) string {
	br := bufio.NewReaderSize(r, 64)
	var out bytes.Buffer
	var req binRequest
	for i := 0; i < 1000; i++ {
		err := readBinRequest(br, &req)
		if err != nil {
			fmt.Fprintf(&out, "error %v", err)
			return out.String()
		}
		fmt.Fprintf(&out, "op %x key %q extras %x value %d opaque %d cas %d\n", req.opcode, req.key, req.extras, req.valueLen, req.opaque, req.cas)
		if _, err := br.Discard(req.valueLen); err != nil {
			fmt.Fprintf(&out, "value: %v", err)
			return out.String()
		}
	}
	return out.String()
}

func TestReadBinRequest(t *testing.T) {
	stream := bytes.Join([][]byte{
		binReq(opSet, "k", "\x00\x00\x00\x07\x00\x00\x00\x00", "value", 1),
		binReq(opGetKQ, "k", "", "", 2),
		binReq(0x50, "", "", "ignored", 3), // unknown: read whole, answered later
		binReq(opNoop, "", "", "", 4),
		binReq(opGet, "", "", "", 5), // no key: invalid
	}, nil)
	got := readAll(bytes.NewReader(stream))
	want := "op 1 key \"k\" extras 0000000700000000 value 5 opaque 1 cas 0\n" +
		"op d key \"k\" extras  value 0 opaque 2 cas 0\n" +
		"op 50 key \"\" extras  value 7 opaque 3 cas 0\n" +
		"op a key \"\" extras  value 0 opaque 4 cas 0\n" +
		"error " + errBinInvalid.Error()
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if one := readAll(iotest.OneByteReader(bytes.NewReader(stream))); one != got {
		t.Errorf("one byte at a time:\n%s\nat once:\n%s", one, got)
	}
}

// FuzzReadBinRequest: no input panics the reader, nothing it accepts
// breaks the limits, and the stream reads the same one byte at a time.
func FuzzReadBinRequest(f *testing.F) {
	for op := range binShapes {
		f.Add(binReq(op, "key", "", "v", 1))
	}
	f.Add(binReq(opSet, "k", "12345678", "value", 1))
	f.Add(binReq(opIncrement, "n", "12345678901234567890", "", 1))
	f.Add(binReq(opFlush, "", "1234", "", 1))
	f.Add(append(binReq(opNoop, "", "", "", 1), 0x81))
	f.Fuzz(func(t *testing.T, in []byte) {
		var r binRequest
		br := bufio.NewReader(bytes.NewReader(in))
		for readBinRequest(br, &r) == nil {
			if len(r.key) > maxKeyLen || len(r.extras) > 255 || r.valueLen < 0 {
				t.Fatalf("accepted key %d extras %d value %d", len(r.key), len(r.extras), r.valueLen)
			}
			if _, ok := binShapes[r.opcode]; ok && !binShapes[r.opcode].value && r.valueLen != 0 {
				t.Fatalf("opcode %x accepted with a value", r.opcode)
			}
			if _, err := br.Discard(r.valueLen); err != nil {
				break
			}
		}
		if a, b := readAll(bytes.NewReader(in)), readAll(iotest.OneByteReader(bytes.NewReader(in))); a != b {
			t.Fatalf("at once:\n%s\none byte at a time:\n%s", a, b)
		}
	})
}

// readPacket reads one response: header fields and body.
func readPacket(t *testing.T, c *testmc.Conn) (op byte, status uint16, opaque uint32, body []byte) {
	t.Helper()
	c.NetConn.SetReadDeadline(time.Now().Add(10 * time.Second))
	h := make([]byte, 24)
	if _, err := io.ReadFull(c.Reader, h); err != nil {
		t.Fatal(err)
	}
	if h[0] != binResponseMagic {
		t.Fatalf("magic %#x", h[0])
	}
	body = make([]byte, binary.BigEndian.Uint32(h[8:]))
	if _, err := io.ReadFull(c.Reader, body); err != nil {
		t.Fatal(err)
	}
	return h[1], binary.BigEndian.Uint16(h[6:]), binary.BigEndian.Uint32(h[12:]), body
}

// What the binary protocol does where the proxy and memcached part ways:
// reserved keys, verbosity (memcached 1.6 misreads the stream after it).
func TestWireBinary(t *testing.T) {
	addr, _ := startProxy(t, Config{}, testmc.Start(t))
	c := testmc.Dial(t, addr)
	for i, b := range bytes.Join([][]byte{
		binReq(0x1b, "", "\x00\x00\x00\x01", "", 1),
		binReq(opSet, DefaultLockPrefix+"x", "12345678", "v", 2),
		binReq(opGetK, DefaultLockPrefix+"x", "", "", 3),
		binReq(opNoop, "", "", "", 4),
	}, nil) {
		if i%7 == 0 {
			time.Sleep(time.Millisecond) // in pieces
		}
		c.NetConn.Write([]byte{b})
	}
	for _, want := range []struct {
		op     byte
		status binStatus
		body   string
	}{
		{0x1b, statusUnknown, "Unknown command"},
		{opSet, statusInvalid, "key is reserved for locks"},
		{opGetK, statusInvalid, "key is reserved for locks"},
		{opNoop, statusOK, ""},
	} {
		op, status, _, body := readPacket(t, c)
		if op != want.op || binStatus(status) != want.status || string(body) != want.body {
			t.Errorf("got op %#x status %#x %q; want %#x %#x %q", op, status, body, want.op, want.status, want.body)
		}
	}
}
