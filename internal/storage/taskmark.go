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

// WriteTaskMark replaces the instance's mark whole (temporary file, then rename).
func (n *Node) WriteTaskMark(uid string, mark TaskMark) error {
	path, err := n.taskMarkPath(uid)
	if err != nil {
		return err
	}
	b, err := json.Marshal(mark)
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
		err = f.Sync() // on disk before the rename makes it the mark
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write task mark of %s: %w", uid, err)
	}
	return os.Rename(tmp, path)
}
