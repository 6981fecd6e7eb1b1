package affinity

import (
	"reflect"
	"testing"
	"time"
)

// FuzzDecode: any input either fails to decode or decodes into a message
// that encodes back to the same bytes and merges without panicking or
// breaking the table's counts.
func FuzzDecode(f *testing.F) {
	c := newClock()
	now := c.now().UnixMilli()
	f.Add(encodeMsg(kindUpdate, 1, 2, []wireBinding{{k: userKey("u"), backend: "imap1", live: true, since: now, ver: 2}}, nil))
	f.Add(encodeMsg(kindState, 1, 9, []wireBinding{
		{k: userKey("u"), backend: "imap1", since: now - 5000, idle: 1000, ver: 3},
		{k: userKey("v"), backend: "imap.2_x", live: true, since: now, ver: 9},
	}, []clearMsg{{k: userKey("w"), at: now}}))
	f.Add(encodeMsg(kindUpdate, 0, 0, nil, nil))
	f.Add([]byte{1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		// Encoding what was decoded gives a message that decodes the same
		// (the bytes may differ: a varint decodes from a non-minimal form).
		back := encodeMsg(m.kind, m.epoch, m.seq, m.binds, m.clears)
		if m2, err := decode(back); err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoded message differs: %v\n%+v\n%+v", err, m, m2)
		}
		if len(back) > len(b) {
			t.Fatalf("re-encoded message longer: %d > %d", len(back), len(b))
		}
		tb := New(Config{Expire: time.Hour, MaxEntries: 50}, c.now)
		tb.MergeRemote("n1", b)
		tb.MergeRemote("n1", b)
		if _, r := tb.Counts(); r < 0 || r > 50 {
			t.Fatalf("%d remote bindings", r)
		}
		n := 0
		for _, o := range tb.origins {
			if o.n != o.count() {
				t.Fatalf("origin counts %d, holds %d", o.n, o.count())
			}
			n += o.count()
		}
		if _, r := tb.Counts(); int64(n) != r {
			t.Fatalf("count %d, held %d", r, n)
		}
	})
}
