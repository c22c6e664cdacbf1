package controllers

import (
	"context"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// APIContact follows whether the manager reaches the API server. While it does not, its
// caches stop, and an agent's lease that seems to lapse then says nothing of the agent: the
// agents cannot renew either. So once contact is back, every node gets one full lease duration
// and grace to renew before a lapse counts (see HypervisorReconciler.heartbeat); without this, an
// API server outage of a minute marked every node Down the moment it ended, and the moves in
// flight failed with "went down before the move began".
type APIContact struct {
	// Reader reads from the API server itself, not a cache.
	Reader client.Reader
	// Namespace is where the probe lists Leases (the manager may read those).
	Namespace string
	// Interval is how often it probes (a second when zero).
	Interval time.Duration

	mu        sync.Mutex
	since     time.Time
	lost      bool
	now       func() time.Time
	probeOnce func(ctx context.Context) error
}

// Start probes the API server until ctx ends.
func (a *APIContact) Start(ctx context.Context) error {
	interval := a.Interval
	if interval == 0 {
		interval = time.Second
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		probeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := a.probe(probeCtx)
		cancel()
		a.record(err == nil)
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

func (a *APIContact) probe(ctx context.Context) error {
	if a.probeOnce != nil {
		return a.probeOnce(ctx)
	}
	return a.Reader.List(ctx, &coordinationv1.LeaseList{}, client.InNamespace(a.Namespace), client.Limit(1))
}

// record notes one probe's outcome.
func (a *APIContact) record(reached bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case !reached:
		a.lost = true
	case a.lost || a.since.IsZero():
		a.since, a.lost = a.clock(), false
	}
}

// Since says since when the manager has reached the API server without a break; ok is false
// while it does not (or before the first probe answered).
func (a *APIContact) Since() (since time.Time, ok bool) {
	if a == nil {
		return time.Time{}, true // not followed: judged as before
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.since, !a.lost && !a.since.IsZero()
}

func (a *APIContact) clock() time.Time {
	if a.now != nil {
		return a.now()
	}
	return time.Now()
}
