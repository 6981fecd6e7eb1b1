package wire

import (
	"encoding/binary"
	"testing"
)

func TestReader(t *testing.T) {
	b := []byte{7}
	b = binary.BigEndian.AppendUint64(b, 1<<40)
	b = binary.AppendUvarint(b, 300)
	b = append(b, make([]byte, 16)...)
	b[len(b)-1] = 9
	b = append(b, 'x', 'y')
	r := Reader{B: b}
	var d [16]byte
	if r.Byte() != 7 || r.U64() != 1<<40 || r.Uvarint(300) != 300 {
		t.Fatal("values")
	}
	r.Bytes16(&d)
	if d[15] != 9 || string(r.Bytes(2)) != "xy" || r.Err || len(r.B) != 0 {
		t.Fatalf("rest: %v %q %v", d, r.B, r.Err)
	}
	// Past the end: zero values, and the error sticks.
	if r.Byte() != 0 || !r.Err || r.U64() != 0 || r.Bytes(0) != nil {
		t.Fatal("read past the end")
	}
	// Out of range or malformed varints, negative lengths.
	for _, in := range [][]byte{binary.AppendUvarint(nil, 301), {0x80}, nil} {
		r := Reader{B: in}
		if r.Uvarint(300) != 0 || !r.Err {
			t.Errorf("varint %x accepted", in)
		}
	}
	if r := (Reader{B: []byte{1}}); r.Bytes(-1) != nil || !r.Err {
		t.Error("negative length accepted")
	}
}
