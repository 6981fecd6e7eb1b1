package cluster

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/routing"
)

// flakyStore is raft's in-memory log store whose StoreLogs fails once when
// armed: the follower then answers an AppendEntries with Success=false,
// as after a failed disk write.
type flakyStore struct {
	*raft.InmemStore
	fail atomic.Bool
}

func (s *flakyStore) StoreLogs(logs []*raft.Log) error {
	if s.fail.CompareAndSwap(true, false) {
		return errors.New("injected log store failure")
	}
	return s.InmemStore.StoreLogs(logs)
}

func (s *flakyStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// Replication survives a follower refusing an AppendEntries while writes
// stream: three raft servers over the production transport (the
// configuration New uses, over the mutual-TLS cluster port), four writers,
// and a follower's log write failing once per round. With raft's pipelined
// replication (MaxRPCsInFlight 2) the first refusal stalled replication to
// that follower for good in every run (see raftTransportConfig).
func TestPipelineStall(t *testing.T) {
	ca := newTestCA(t)
	type server struct {
		r     *raft.Raft
		store *flakyStore
	}
	var servers []*server
	var conf raft.Configuration
	var trs []raft.Transport
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("s%d", i)
		tr := &trust{}
		tr.mat.Store(ca.material(t, name))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		m := newMux(ln, tr, testLogger(t))
		nt := raft.NewNetworkTransportWithConfig(raftTransportConfig(
			&raftLayer{chanListener: chanListener{m: m, ch: m.raftCh}}, newHCLog(testLogger(t), "raft-net")))
		trs = append(trs, nt)
		servers = append(servers, &server{store: &flakyStore{InmemStore: raft.NewInmemStore()}})
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(name), Address: nt.LocalAddr()})
	}
	for i, s := range servers {
		rc := raft.DefaultConfig()
		rc.LocalID = conf.Servers[i].ID
		rc.Logger = newHCLog(testLogger(t), "raft")
		rc.HeartbeatTimeout, rc.ElectionTimeout = unitTiming.HeartbeatTimeout, unitTiming.ElectionTimeout
		rc.LeaderLeaseTimeout, rc.CommitTimeout = unitTiming.LeaderLeaseTimeout, unitTiming.CommitTimeout
		r, err := raft.NewRaft(rc, routing.NewFSM(), s.store, s.store, raft.NewInmemSnapshotStore(), trs[i])
		if err != nil {
			t.Fatal(err)
		}
		s.r = r
	}
	var writers sync.WaitGroup
	stop := make(chan struct{})
	defer func() {
		close(stop)
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Writers first: a write pending when raft shuts down may
			// never be answered (raft's apply futures do not watch for
			// shutdown).
			writers.Wait()
			for i, s := range servers {
				_ = s.r.Shutdown().Error()
				nt := trs[i].(*raft.NetworkTransport)
				nt.CloseStreams() // pooled connections, as closeStores does
				_ = nt.Close()
			}
		}()
		select {
		case <-done:
		case <-time.After(unitWait):
			// A stalled pipeline's goroutines never end, and raft's
			// Shutdown waits for them: leak them rather than hang.
			t.Error("raft shutdown hung: replication goroutines stuck")
		}
	}()
	if err := servers[0].r.BootstrapCluster(conf).Error(); err != nil {
		t.Fatal(err)
	}
	var leader atomic.Pointer[server]
	findLeader := func() *server {
		waitFor(t, unitWait, "a leader", func() bool {
			for _, s := range servers {
				if s.r.State() == raft.Leader {
					leader.Store(s)
					return true
				}
			}
			return false
		})
		return leader.Load()
	}
	findLeader()
	cmd, _ := putBackend("b1").Encode()
	for w := 0; w < 4; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := leader.Load().r.Apply(cmd, time.Second).Error()
				switch {
				case errors.Is(err, raft.ErrRaftShutdown):
					return
				case err != nil:
					time.Sleep(time.Millisecond) // leadership moved: the test finds the new leader
				}
			}
		}()
	}
	for round := 0; round < 30; round++ {
		l := findLeader()
		var followers []*server
		for _, s := range servers {
			if s != l {
				followers = append(followers, s)
			}
		}
		followers[round%2].store.fail.Store(true)
		target := l.r.LastIndex() + 20
		for _, f := range followers {
			waitFor(t, unitWait, fmt.Sprintf("round %d: every follower to reach index %d", round, target), func() bool {
				return f.r.LastIndex() >= target
			})
		}
	}
}
