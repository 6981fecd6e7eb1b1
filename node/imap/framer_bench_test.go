package imap

import (
	"fmt"
	"strings"
	"testing"
)

// benchChunk repeats the responses made by line(i) up to about 16 KiB (a
// relay read), whole responses only, so that every chunk starts at a
// boundary.
func benchChunk(line func(i int) string) []byte {
	var b strings.Builder
	for i := 1; b.Len() < 16<<10; i++ {
		b.WriteString(line(i))
	}
	return []byte(b.String())
}

func benchServer(b *testing.B, chunk []byte) {
	f := &Framer{}
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		if f.ServerData(chunk) != len(chunk) {
			b.Fatal("no boundary at the end of the chunk")
		}
	}
}

// BenchmarkFramerResponses: short untagged responses (flag changes, a
// mailbox listing), the framer's cost per byte of a typical session.
func BenchmarkFramerResponses(b *testing.B) {
	benchServer(b, benchChunk(func(i int) string {
		return fmt.Sprintf("* %d FETCH (UID %d FLAGS (\\Seen \\Answered))\r\n", i, 40000+i)
	}))
}

// BenchmarkFramerLiterals: FETCH responses with header literals that the
// framer reads through (a client listing a mailbox).
func BenchmarkFramerLiterals(b *testing.B) {
	hdr := "From: Alice <alice@example.com>\r\nSubject: the quarterly figures, again\r\nDate: Thu, 3 Dec 2026 18:00:00 +0000\r\n\r\n"
	benchServer(b, benchChunk(func(i int) string {
		return fmt.Sprintf("* %d FETCH (UID %d BODY[HEADER.FIELDS (FROM SUBJECT DATE)] {%d}\r\n%s)\r\n", i, 40000+i, len(hdr), hdr)
	}))
}

// BenchmarkFramerClient: the client's commands, read for COMPRESS.
func BenchmarkFramerClient(b *testing.B) {
	chunk := benchChunk(func(i int) string { return fmt.Sprintf("a%d UID FETCH %d (FLAGS)\r\n", i, i) })
	f := &Framer{}
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		f.ClientData(chunk)
	}
	if !f.AtBoundary() {
		b.Fatal("not at a boundary")
	}
}
