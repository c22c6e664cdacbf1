package storage

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The storage root's identity. A root whose filesystem is not mounted (yet) is an empty
// directory, or one of the host's own; an agent that took it for its storage would launch
// blank disks, quarantine nothing it should and report instances' disks missing. So the root
// carries an ID (storageIDFile), which the agent records once outside the root (the
// Hypervisor's status.storageID) and checks before it works with the root's files.

const storageIDFile = ".storage-id"

// ErrStorageUnavailable says the storage root is not the filesystem recorded for the node.
var ErrStorageUnavailable = errors.New("the storage root is unavailable")

// ErrStorageUnverified says nothing has checked the root against its record yet.
var ErrStorageUnverified = errors.New("the storage root's identity has not been checked yet")

type identityState struct {
	// probe reads the identity file; readFile is how (os.ReadFile unless a test says).
	probe    rootProbe
	readFile func(string) ([]byte, error)

	mu sync.Mutex
	// accepted is the ID the root was found to have, once it matched its record.
	accepted string
	// refused is why the last check refused the root.
	refused error
}

// StorageID identifies the filesystem the storage root is on: a random ID written into the
// root by the first agent that asks, so that every node that mounts the same storage reads the
// same ID, and nodes that merely use the same path do not. It writes one only if the root has
// none: call it only when nothing recorded the root before (Verify does).
func (n *Node) StorageID() (string, error) {
	if id, err := n.ReadStorageID(); err == nil {
		return id, nil
	}
	if err := os.MkdirAll(n.Root, 0o755); err != nil {
		return "", err
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	// Written aside and linked into place: link fails if another agent won the race, and then
	// its ID is the root's.
	path := filepath.Join(n.Root, storageIDFile)
	tmp, err := os.CreateTemp(n.Root, ".storage-id-*")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.WriteString(hex.EncodeToString(raw[:]) + "\n"); err != nil {
		_ = tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	return n.ReadStorageID()
}

// ReadStorageID returns the ID the root holds, never writing one; ErrStorageUnavailable when
// it holds none.
func (n *Node) ReadStorageID() (string, error) {
	path := filepath.Join(n.Root, storageIDFile)
	b, err := n.identity.probe.read(path, n.identity.readFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s has no %s (is it mounted?)", ErrStorageUnavailable, n.Root, storageIDFile)
	} else if errors.Is(err, ErrStorageUnavailable) {
		return "", err
	} else if err != nil {
		return "", fmt.Errorf("%w: %v", ErrStorageUnavailable, err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrStorageUnavailable, path)
	}
	return id, nil
}

// Verify checks the root against the ID recorded for the node and remembers the outcome for
// Ready. With no record (the node's first start) the root is taken as it is, given an ID if
// it has none; the caller records the ID returned. A root with no ID or another is refused.
func (n *Node) Verify(recorded string) (string, error) {
	var id string
	var err error
	if recorded == "" {
		id, err = n.StorageID()
	} else {
		id, err = n.ReadStorageID()
		if err == nil && id != recorded {
			err = fmt.Errorf("%w: %s holds storage %s, not %s, the one recorded for this node (another filesystem is mounted there)",
				ErrStorageUnavailable, n.Root, id, recorded)
		}
	}
	n.identity.mu.Lock()
	defer n.identity.mu.Unlock()
	if err != nil {
		if !errors.Is(err, ErrStorageUnavailable) {
			err = fmt.Errorf("%w: %v", ErrStorageUnavailable, err)
		}
		n.identity.accepted, n.identity.refused = "", err
		return "", err
	}
	n.identity.accepted, n.identity.refused = id, nil
	return id, nil
}

// Ready says whether the root may be worked with: it passed its last Verify and still holds
// the ID it had then (read again, so that a mount gone since is noticed at once).
func (n *Node) Ready() error {
	n.identity.mu.Lock()
	accepted, refused := n.identity.accepted, n.identity.refused
	n.identity.mu.Unlock()
	if refused != nil {
		return refused
	}
	if accepted == "" {
		return ErrStorageUnverified
	}
	id, err := n.ReadStorageID()
	if err != nil {
		return err
	}
	if id != accepted {
		return fmt.Errorf("%w: %s now holds storage %s, not %s", ErrStorageUnavailable, n.Root, id, accepted)
	}
	return nil
}

// probeTimeout is how long a caller waits for the identity file to be read before it takes the
// root for unavailable (a variable for tests).
var probeTimeout = 5 * time.Second

// rootProbe reads the identity file in a goroutine of its own, one read at a time: a read that
// a hung mount (an NFS server gone) holds in the kernel holds only that goroutine, and while it
// hangs every caller learns within probeTimeout that the root does not answer, without starting
// another. Since every task and sweep asks first, one hung mount takes none of the node's
// workers: they wait for the root the way they wait for an unmounted one.
type rootProbe struct {
	mu      sync.Mutex
	current *probeRead
}

type probeRead struct {
	started time.Time
	done    chan struct{}
	data    []byte
	err     error
}

func (p *rootProbe) read(path string, readFile func(string) ([]byte, error)) ([]byte, error) {
	if readFile == nil {
		readFile = os.ReadFile
	}
	p.mu.Lock()
	r := p.current
	if r == nil || isDone(r.done) {
		r = &probeRead{started: time.Now(), done: make(chan struct{})}
		p.current = r
		go func() {
			r.data, r.err = readFile(path)
			close(r.done)
		}()
	}
	p.mu.Unlock()
	select {
	case <-r.done:
		return r.data, r.err
	case <-time.After(probeTimeout):
		return nil, fmt.Errorf("%w: reading %s has not returned for %s (a hung mount?)", ErrStorageUnavailable, path,
			time.Since(r.started).Round(time.Second))
	}
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
