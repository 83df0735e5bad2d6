package deviceid

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

func testEntry(owner string, size int) entry {
	rr := make([]byte, 0, size)
	for len(rr)+8+12+3 <= size {
		rr = append(rr, make([]byte, 8)...)
		rr = append(rr, atQuestion(52, 1, 60, []byte{3, 1, byte(len(rr))})...)
	}
	return newEntry(owner, flagRecord, 0, rr, 1)
}

func TestStore(t *testing.T) {
	s := newStore(1)
	get := func(owner string) entry {
		var out entry
		s.view(owner, func(e entry) { out = bytes.Clone(e) })
		return out
	}
	a, b := testEntry("a.", 60), testEntry("b.", 100)
	s.set("a.", a)
	s.set("b.", b)
	if !bytes.Equal(get("a."), a) || !bytes.Equal(get("b."), b) || get("c.") != nil || s.len() != 2 {
		t.Fatal("insert")
	}
	// Replace with one of the same size (in place) and of another size (moved).
	a2 := newEntry("a.", flagRecord|flagDevice, 0, a.rrset(), 1)
	s.set("a.", a2)
	b2 := testEntry("b.", 200)
	s.set("b.", b2)
	if !bytes.Equal(get("a."), a2) || !bytes.Equal(get("b."), b2) || s.len() != 2 {
		t.Fatal("replace")
	}
	if !s.modify("a.", func(e entry) { e.setBelow(7) }) || get("a.").below() != 7 {
		t.Error("modify in place")
	}
	s.delete("a.")
	s.delete("a.")
	if get("a.") != nil || s.len() != 1 {
		t.Error("delete")
	}
	// The largest entry there can be.
	big := testEntry("big.", maxRRset)
	s.set("big.", big)
	if !bytes.Equal(get("big."), big) {
		t.Error("the largest entry")
	}
	s.free()
}

// TestStoreReclaims: replacing entries again and again leaves the memory bounded:
// dead bytes are reclaimed by compaction.
func TestStoreReclaims(t *testing.T) {
	s := newStore(1)
	for round := range 200 {
		for i := range 500 {
			owner := fmt.Sprintf("d%d.", i)
			s.set(owner, testEntry(owner, 40+round%7*30)) // sizes change: each set moves the entry
		}
	}
	live, chunks := 0, 0
	for i := range s.shards {
		sh := &s.shards[i]
		live += sh.live
		chunks += len(sh.chunks)
		if sh.dead > sh.live && sh.dead > chunkSize {
			t.Errorf("shard %d: %d dead bytes beside %d live", i, sh.dead, sh.live)
		}
	}
	if chunks > 2*storeShards {
		t.Errorf("%d chunks for %d live bytes", chunks, live)
	}
	for i := range 500 {
		owner := fmt.Sprintf("d%d.", i)
		if !s.view(owner, func(e entry) {
			if string(e.owner()) != owner {
				t.Errorf("entry of %s has owner %s", owner, e.owner())
			}
		}) {
			t.Errorf("%s lost", owner)
		}
	}
	s.free()
}

// TestStoreClash: owners whose hashes collide are told apart by their names, and
// deleting the one that holds the hash leaves the other found.
func TestStoreClash(t *testing.T) {
	s := newStore(1)
	s.hash = func(string) uint64 { return 42 }
	get := func(owner string) string {
		out := ""
		s.view(owner, func(e entry) { out = string(e.owner()) })
		return out
	}
	for _, o := range []string{"a.", "b.", "c."} {
		s.set(o, testEntry(o, 50))
	}
	s.set("b.", testEntry("b.", 90)) // a clashing owner replaced
	if get("a.") != "a." || get("b.") != "b." || get("c.") != "c." || get("d.") != "" || s.len() != 3 {
		t.Fatalf("clashing owners: %q %q %q, %d names", get("a."), get("b."), get("c."), s.len())
	}
	s.delete("a.")
	if get("a.") != "" || get("b.") != "b." || get("c.") != "c." || s.len() != 2 {
		t.Errorf("after deleting the holder: %q %q %q", get("a."), get("b."), get("c."))
	}
	s.delete("c.")
	s.delete("b.")
	if s.len() != 0 {
		t.Errorf("%d names left", s.len())
	}
}

// TestStoreConcurrent: readers see whole entries while writers replace, delete and
// compact (run with -race).
func TestStoreConcurrent(t *testing.T) {
	s := newStore(1)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 2 {
		wg.Go(func() {
			for round := 0; ; round++ {
				select {
				case <-stop:
					return
				default:
				}
				owner := fmt.Sprintf("d%d.", (round*7+w)%300)
				if round%5 == 0 {
					s.delete(owner)
				} else {
					s.set(owner, testEntry(owner, 40+round%9*20))
				}
			}
		})
	}
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for i := range 20000 {
				owner := fmt.Sprintf("d%d.", i%300)
				s.view(owner, func(e entry) {
					if string(e.owner()) != owner || !allCurrent(e.rrset(), 0) {
						t.Errorf("torn entry for %s", owner)
					}
				})
			}
		})
	}
	for i := range 4 {
		readers.Go(func() {
			for range 200 {
				s.each(i, func(e entry) bool { return len(e.owner()) > 0 })
			}
		})
	}
	readers.Wait()
	close(stop)
	wg.Wait()
	s.free()
}
