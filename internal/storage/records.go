package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// TaskMark records, beside an instance's disk, which task the agent began on the domain and
// which run of the domain that was. A task that restarts the guest (a reboot) is done once the
// domain runs a newer run; an agent that died in the middle thus neither skips nor repeats it.
type TaskMark struct {
	TaskID int64 `json:"taskID"`
	RunID  int64 `json:"runID"`
	// Step is how far a task of several steps got (a rebuild: "booted" once the new disk
	// booted and the old one is gone).
	Step string `json:"step,omitempty"`
}

// ReadTaskMark returns the instance's mark; ok is false when there is none. A mark cut short
// by a crash says nothing: the task starts afresh, which every task allows (a reboot then
// reboots, rather than failing for ever).
func (n *Node) ReadTaskMark(uid string) (TaskMark, bool, error) {
	return readRecord(n, uid, taskMarkFile, func(TaskMark) bool { return true })
}

// WriteTaskMark replaces the instance's mark whole.
func (n *Node) WriteTaskMark(uid string, mark TaskMark) error {
	path, err := n.recordPath(uid, taskMarkFile)
	if err != nil {
		return err
	}
	return writeFileWhole(path, mark)
}

// Owner names the Instance an instance directory belongs to, so that the agent can ask the API
// server about that one instance instead of listing every instance of the cluster.
type Owner struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// ReadOwner returns the owner recorded for an instance directory; ok is false when there is
// none (a directory made before owners were recorded, or a record cut short).
func (n *Node) ReadOwner(uid string) (Owner, bool, error) {
	return readRecord(n, uid, ownerFile, func(o Owner) bool { return o.Name != "" })
}

// WriteOwner records an instance directory's owner, once: the owner never changes.
func (n *Node) WriteOwner(uid string, owner Owner) error {
	path, err := n.recordPath(uid, ownerFile)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return writeFileWhole(path, owner)
}

// The records kept in an instance's directory.
const (
	taskMarkFile = "task.json"
	ownerFile    = "owner.json"
)

func (n *Node) recordPath(uid, file string) (string, error) {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, file), nil
}

// readRecord reads one of an instance's JSON records; ok is false when there is none, or when
// what is there does not parse or is not valid (a write cut short by a crash).
func readRecord[T any](n *Node, uid, file string, valid func(T) bool) (record T, ok bool, err error) {
	var zero T
	path, err := n.recordPath(uid, file)
	if err != nil {
		return zero, false, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return zero, false, nil
	}
	if err != nil {
		return zero, false, err
	}
	if json.Unmarshal(b, &record) != nil || !valid(record) {
		return zero, false, nil
	}
	return record, true, nil
}

// writeFileWhole writes v as JSON to path through a synced temporary file and a rename, so
// that path holds either the old content or the whole new one.
func writeFileWhole(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync() // on disk before the rename makes it the file
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
