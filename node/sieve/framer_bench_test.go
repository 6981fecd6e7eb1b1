package sieve

import (
	"fmt"
	"strings"
	"testing"
)

// benchChunk repeats the responses made by resp(i) up to about 16 KiB (a
// relay read), whole responses only.
func benchChunk(resp func(i int) string) []byte {
	var b strings.Builder
	for i := 1; b.Len() < 16<<10; i++ {
		b.WriteString(resp(i))
	}
	return []byte(b.String())
}

func benchServer(b *testing.B, chunk []byte) {
	f := NewFramer().(*Framer)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		if f.ServerData(chunk) != len(chunk) {
			b.Fatal("no boundary at the end of the chunk")
		}
	}
}

// BenchmarkFramerListScripts: LISTSCRIPTS responses, a line per script.
func BenchmarkFramerListScripts(b *testing.B) {
	benchServer(b, benchChunk(func(i int) string {
		return fmt.Sprintf("\"vacation-%d\" ACTIVE\r\n\"filters-%d\"\r\n\"spam-%d\"\r\nOK \"Listscripts completed.\"\r\n", i, i, i)
	}))
}

// BenchmarkFramerGetScript: GETSCRIPT responses, a literal the framer
// reads through.
func BenchmarkFramerGetScript(b *testing.B) {
	script := "require [\"fileinto\", \"envelope\"];\r\nif header :contains \"subject\" \"[list]\" {\r\n  fileinto \"lists\";\r\n}\r\n"
	benchServer(b, benchChunk(func(int) string {
		return fmt.Sprintf("{%d}\r\n%s\r\nOK \"Getscript completed.\"\r\n", len(script), script)
	}))
}
