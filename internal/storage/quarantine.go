package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The quarantine holds the files of instances that vanished from the API without their own
// terminate having run here: an Instance whose finalizer someone removed, an etcd restored from
// an older backup, objects recreated with new UIDs. Nothing proves such files are unwanted, so
// they are kept, whole, under a name that says so, until an administrator removes them or the
// node's grace period for them ends:
//
//	<root>/quarantine/<uid>/                  the instance directory, moved as it was
//	<root>/quarantine/<uid>/quarantine.json   why and when, and whose it was
//
// Only an instance's terminate (or a finished move's cleanup) deletes instance files outright.
const quarantineDir = "quarantine"

// QuarantineRecord says why an instance's files were set aside.
type QuarantineRecord struct {
	// UID is the vanished instance's.
	UID string `json:"uid"`
	// Namespace and Name are the owner the directory recorded; empty for a directory made
	// before owners were recorded.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Node is the agent's node that set them aside.
	Node   string    `json:"node"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// Quarantined is one quarantined instance directory as found on the node.
type Quarantined struct {
	QuarantineRecord
	// Path is the directory.
	Path string
	// Bytes is the space its files take.
	Bytes int64
}

const quarantineRecordFile = "quarantine.json"

// QuarantineInstanceFiles moves an instance's directory into the quarantine, with a record of
// why. The record is written into the directory before the move, so a crash at any point leaves
// either the directory where it was (and the next sweep moves it) or in quarantine with its
// record. A directory already moved (by this node earlier or, on shared storage, by another
// node's agent) is left as it is. It never deletes anything.
func (n *Node) QuarantineInstanceFiles(uid string, rec QuarantineRecord) error {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return err
	}
	target := filepath.Join(n.Root, quarantineDir, uid)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	rec.UID = uid
	path := filepath.Join(dir, quarantineRecordFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileWhole(path, rec); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(target); err == nil {
		return fmt.Errorf("quarantine of instance %s: %s exists already; both are kept", uid, target)
	}
	if err := os.Rename(dir, target); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // another node's agent moved it first
		}
		return fmt.Errorf("quarantine of instance %s: %w", uid, err)
	}
	return nil
}

// QuarantinedInstances lists the quarantine. A directory whose record is missing or unreadable
// (a hand-made one) is listed with what its name says.
func (n *Node) QuarantinedInstances() ([]Quarantined, error) {
	root := filepath.Join(n.Root, quarantineDir)
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Quarantined
	for _, e := range entries {
		if !e.IsDir() || !uidPattern.MatchString(e.Name()) {
			continue
		}
		q := Quarantined{Path: filepath.Join(root, e.Name())}
		q.UID = e.Name()
		if b, err := os.ReadFile(filepath.Join(q.Path, quarantineRecordFile)); err == nil {
			var rec QuarantineRecord
			if json.Unmarshal(b, &rec) == nil && rec.UID == q.UID {
				q.QuarantineRecord = rec
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if q.Reason == "" {
			q.Reason = "NoRecord: the directory has no quarantine record (set aside by hand?)"
		}
		if q.Since.IsZero() {
			// Without a record, the directory's own time stands for the move's.
			if info, err := e.Info(); err == nil {
				q.Since = info.ModTime()
			}
		}
		q.Bytes, err = diskUsage(q.Path)
		if err != nil {
			return nil, err
		}
		out = append(out, q)
	}
	return out, nil
}

// RemoveQuarantined deletes one quarantined instance's files: the end of its grace period, or
// an administrator's decision.
func (n *Node) RemoveQuarantined(uid string) error {
	if !uidPattern.MatchString(uid) {
		return fmt.Errorf("%q is not an instance UID", uid)
	}
	if err := os.RemoveAll(filepath.Join(n.Root, quarantineDir, uid)); err != nil {
		return fmt.Errorf("remove quarantined files of instance %s: %w", uid, err)
	}
	return nil
}

// diskUsage is the space the files under dir take (allocated blocks: qcow2 disks are sparse).
func diskUsage(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += allocatedBytes(info)
		return nil
	})
	return total, err
}

// allocatedBytes is what a file takes on disk, which for a sparse file is less than its size.
func allocatedBytes(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512 // st_blocks counts 512-byte units whatever the block size
	}
	return info.Size()
}
