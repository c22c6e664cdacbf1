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
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s has no %s (is it mounted?)", ErrStorageUnavailable, n.Root, storageIDFile)
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
