package controllers

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// attempts counts the failed attempts at something per object (placing an instance, importing
// an image) and says how long to wait before the next one. The count lives in memory, not in
// status: writing it would wake the controller again at once and defeat the backoff.
type attempts struct {
	mu    sync.Mutex
	count map[types.UID]int
}

// failed counts a failed attempt and returns the wait before the next: first, doubled with
// every attempt after the first, up to limit.
func (a *attempts) failed(uid types.UID, first, limit time.Duration) time.Duration {
	a.mu.Lock()
	if a.count == nil {
		a.count = map[types.UID]int{}
	}
	a.count[uid]++
	n := a.count[uid]
	a.mu.Unlock()
	d := first
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// forget drops the count of an object that succeeded or is gone.
func (a *attempts) forget(uid types.UID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.count, uid)
}
