package shim

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Under graceful-init, a main process that exits while a Kill's stop is still being planned
// leaves the rest to that stop only if it begins: a stop given up without beginning (forwarded as
// is) is followed by the main-exit drain, and one that began is not.
func TestMainExitDuringAStopGivenUpIsStillDrained(t *testing.T) {
	for _, began := range []bool{false, true} {
		s := &service{containers: map[string]*container{}}
		c := &container{policy: Policy{}}
		s.containers["c"] = c
		claimed := newStop("c", nil, unix.SIGTERM, c.policy)
		c.stop = claimed
		w, err := newMainWatch()
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *stop, 1)
		go func() { got <- s.claimMainExit("c", c, w) }()
		select {
		case st := <-got:
			t.Fatalf("began %v: the main-exit stop was decided (%v) while the claimed stop was still being planned", began, st)
		case <-w.exited:
		}
		// The claimed stop is settled as startStop settles it: begun, or unclaimed.
		if began {
			claimed.settle(true)
		} else {
			s.unclaim(c, claimed)
		}
		select {
		case st := <-got:
			if began && st != nil {
				t.Fatal("a main-exit drain was claimed after a stop that began (it drains the rest itself)")
			}
			if !began {
				if st == nil || c.stop != st || st.inProgress != MainExited {
					t.Fatalf("after a stop given up, the main-exit drain was not claimed (got %v)", st)
				}
				s.reports.Done()
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("began %v: the main-exit claim did not return after the stop settled", began)
		}
		w.close()
	}
}
