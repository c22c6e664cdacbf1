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
}

func (n *Node) taskMarkPath(uid string) (string, error) {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "task.json"), nil
}

// ReadTaskMark returns the instance's mark; ok is false when there is none.
func (n *Node) ReadTaskMark(uid string) (mark TaskMark, ok bool, err error) {
	path, err := n.taskMarkPath(uid)
	if err != nil {
		return TaskMark{}, false, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return TaskMark{}, false, nil
	}
	if err != nil {
		return TaskMark{}, false, err
	}
	if err := json.Unmarshal(b, &mark); err != nil {
		// A mark cut short by a crash says nothing; the task starts afresh, which every task
		// allows (a reboot then reboots, rather than failing for ever).
		return TaskMark{}, false, nil
	}
	return mark, true, nil
}

// WriteTaskMark replaces the instance's mark whole.
func (n *Node) WriteTaskMark(uid string, mark TaskMark) error {
	path, err := n.taskMarkPath(uid)
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

func (n *Node) ownerPath(uid string) (string, error) {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "owner.json"), nil
}

// ReadOwner returns the owner recorded for an instance directory; ok is false when there is
// none (a directory made before owners were recorded, or a record cut short).
func (n *Node) ReadOwner(uid string) (owner Owner, ok bool, err error) {
	path, err := n.ownerPath(uid)
	if err != nil {
		return Owner{}, false, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, err
	}
	if json.Unmarshal(b, &owner) != nil || owner.Name == "" {
		return Owner{}, false, nil
	}
	return owner, true, nil
}

// WriteOwner records an instance directory's owner, once: the owner never changes.
func (n *Node) WriteOwner(uid string, owner Owner) error {
	path, err := n.ownerPath(uid)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return writeFileWhole(path, owner)
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
