// Package wire holds what the node's gossip decoders (node/throttle,
// node/affinity) share: a bounds-checked reader of untrusted bytes.
package wire

import "encoding/binary"

// Reader is a sticky-error decoder of untrusted bytes: after the first
// read past the end (or out of range), every read returns zero and Err
// stays set, so a decoder checks Err once, after a run of reads.
type Reader struct {
	B   []byte // what is left to read
	Err bool
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if v := r.Bytes(1); v != nil {
		return v[0]
	}
	return 0
}

// Bytes reads n bytes (aliasing the input).
func (r *Reader) Bytes(n int) []byte {
	if r.Err || n < 0 || len(r.B) < n {
		r.Err = true
		return nil
	}
	v := r.B[:n:n]
	r.B = r.B[n:]
	return v
}

// Bytes16 reads 16 bytes into dst.
func (r *Reader) Bytes16(dst *[16]byte) {
	if v := r.Bytes(16); v != nil {
		copy(dst[:], v)
	}
}

// U64 reads a big-endian uint64.
func (r *Reader) U64() uint64 {
	if v := r.Bytes(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// Uvarint reads a varint no larger than limit.
func (r *Reader) Uvarint(limit uint64) uint64 {
	if r.Err {
		return 0
	}
	v, n := binary.Uvarint(r.B)
	if n <= 0 || v > limit {
		r.Err = true
		return 0
	}
	r.B = r.B[n:]
	return v
}
