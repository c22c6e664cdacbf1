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

// ErrQuarantinedDiskGone says a quarantined disk to adopt is not (or no longer) on this storage.
var ErrQuarantinedDiskGone = errors.New("the quarantined disk is not on this node's storage")

// adoptedRecordFile keeps, in the adopting instance's directory, the quarantine record of the
// disk it took.
const adoptedRecordFile = "adopted.json"

// AdoptQuarantined moves the root disk quarantined for instance from into the directory of
// instance to, which boots it instead of a new disk (spec.adoptQuarantinedDisk). The disk moves
// by one rename, so a crash leaves it on one side or the other; the quarantine's record is kept
// beside it as adopted.json. What else the quarantined directory held that was only that
// instance's (its console log, config drive and records) is removed with it; any other file
// (a disk a resize set aside) keeps the directory in quarantine.
func (n *Node) AdoptQuarantined(from, to string) error {
	if !uidPattern.MatchString(from) {
		return fmt.Errorf("%q is not an instance UID", from)
	}
	disk, err := n.RootDisk(to)
	if err != nil {
		return err
	}
	old := filepath.Join(n.Root, quarantineDir, from)
	if _, err := os.Stat(disk); err == nil {
		return n.removeAdoptedLeftovers(old) // adopted already, by a run cut short
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	oldDisk := filepath.Join(old, "disk")
	if _, err := os.Stat(oldDisk); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrQuarantinedDiskGone, oldDisk)
	} else if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(disk), 0o755); err != nil {
		return err
	}
	rec := QuarantineRecord{UID: from}
	if b, err := os.ReadFile(filepath.Join(old, quarantineRecordFile)); err == nil {
		_ = json.Unmarshal(b, &rec) // a record that does not parse still names the UID
	}
	if err := writeFileWhole(filepath.Join(filepath.Dir(disk), adoptedRecordFile), rec); err != nil {
		return err
	}
	if err := os.Rename(oldDisk, disk); err != nil {
		return fmt.Errorf("adopt the quarantined disk of instance %s: %w", from, err)
	}
	return n.removeAdoptedLeftovers(old)
}

// removeAdoptedLeftovers removes what an adopted quarantined directory held besides its disk,
// and the directory if that leaves it empty.
func (n *Node) removeAdoptedLeftovers(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "disk")); err == nil {
		return nil // not adopted from here: keep everything
	}
	for _, f := range []string{"console.log", "config-drive.img", ownerFile, taskMarkFile, quarantineRecordFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	return nil
}
