package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

// managerSupervisor starts the manager again when it exits, as the kubelet restarts the
// container of its Deployment: a manager that loses its leader Lease (the API server too slow
// to renew it, while a thousand simulated nodes start on two cores) exits by design, and the
// next one takes over. The bench says how often it happened.
type managerSupervisor struct {
	mu       sync.Mutex
	cluster  *utils.Cluster
	restarts int
	// endedCPU sums the CPU time of the manager processes that exited.
	endedCPU time.Duration
	done     chan struct{}
	wg       sync.WaitGroup
}

func superviseManager(cluster *utils.Cluster) *managerSupervisor {
	s := &managerSupervisor{cluster: cluster, done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ticker := time.NewTicker(500 * time.Millisecond)
		defer ticker.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-ticker.C:
				if err := s.check(); err != nil {
					fmt.Fprintln(os.Stderr, "bench: restart the manager:", err)
				}
			}
		}
	}()
	return s
}

// check starts the manager again if its process has exited.
func (s *managerSupervisor) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.cluster.Process("manager")
	if p == nil || !exited(p.Pid) {
		return nil
	}
	if u, err := benchutil.Usage(p.Pid); err == nil { // a zombie's stat still holds its CPU time
		s.endedCPU += u.CPU
	}
	if err := s.cluster.KillManager(); err != nil { // reaps it
		return err
	}
	s.restarts++
	fmt.Printf("  the manager exited (it had lost its leader lease: logs/manager.log); started again (%d)\n", s.restarts)
	return s.cluster.StartManager()
}

// usage is the manager's CPU time across its restarts and the peak RSS of the running one.
func (s *managerSupervisor) usage() (benchutil.ProcessUsage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.cluster.Process("manager")
	if p == nil {
		return benchutil.ProcessUsage{}, fmt.Errorf("the manager does not run")
	}
	u, err := benchutil.Usage(p.Pid)
	u.CPU += s.endedCPU
	return u, err
}

// stop ends the supervision (before the cluster stops) and says how many restarts it made.
func (s *managerSupervisor) stop() int {
	close(s.done)
	s.wg.Wait()
	return s.restarts
}

// exited says whether a child process has ended: gone, or a zombie not yet reaped.
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
	fields := strings.Fields(rest)
	return len(fields) == 0 || fields[0] == "Z" || fields[0] == "X"
}
