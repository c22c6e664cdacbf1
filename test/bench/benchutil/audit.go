package benchutil

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Writes counts API writes by who made them and what kind they were.
type Writes map[WriteKey]int

// WriteKey is one row of a Writes table.
type WriteKey struct {
	// Client is the program that wrote: the first word of its user agent (manager, agent).
	Client string
	// Kind is create, update, patch or delete of an object, status (any write to /status), or
	// event (a create or patch of an Event); a write the API server refused has its response
	// code appended ("status/409").
	Kind string
	// Resource is the kind of object written (instances, hypervisors, leases, events).
	Resource string
}

// auditEvent is the part of a kube-apiserver audit event that the benches read.
type auditEvent struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// ReadWrites counts the writes the audit log at path records from byte offset on, and returns
// the offset its end, where the next phase starts counting.
func ReadWrites(path string, offset int64) (Writes, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, offset, err
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, offset, err
	}
	w := Writes{}
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			break // a partial last line is read next time
		}
		if err != nil {
			return nil, offset, err
		}
		offset += int64(len(line))
		var e auditEvent
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, offset, fmt.Errorf("audit log %s: %w", path, err)
		}
		if e.Stage != "ResponseComplete" || e.ObjectRef == nil {
			continue
		}
		key := WriteKey{Client: clientOf(e.UserAgent), Kind: e.Verb, Resource: e.ObjectRef.Resource}
		switch {
		case e.ObjectRef.Resource == "events":
			key.Kind = "event"
		case e.ObjectRef.Subresource == "status":
			key.Kind = "status"
		}
		if e.ResponseStatus != nil && e.ResponseStatus.Code >= 300 {
			// A refused write (a lost race: 409) costs the API server too; show it apart.
			key.Kind += fmt.Sprintf("/%d", e.ResponseStatus.Code)
		}
		w[key]++
	}
	return w, offset, nil
}

// clientOf is the program named at the start of a user agent ("manager/v0.1 (linux/amd64) ...").
func clientOf(userAgent string) string {
	name, _, _ := strings.Cut(userAgent, "/")
	if name == "" {
		return "unknown"
	}
	return name
}

// Total sums the writes that pass keep.
func (w Writes) Total(keep func(WriteKey) bool) int {
	n := 0
	for k, c := range w {
		if keep(k) {
			n += c
		}
	}
	return n
}

// Print writes the table, each count also divided by per (the number of instances).
func (w Writes) Print(out io.Writer, per int) {
	keys := make([]WriteKey, 0, len(w))
	for k := range w {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.Client != b.Client {
			return a.Client < b.Client
		}
		if a.Resource != b.Resource {
			return a.Resource < b.Resource
		}
		return a.Kind < b.Kind
	})
	_, _ = fmt.Fprintf(out, "  %-14s %-12s %-12s %8s %14s\n", "client", "resource", "kind", "writes", "per instance")
	for _, k := range keys {
		_, _ = fmt.Fprintf(out, "  %-14s %-12s %-12s %8d %14.2f\n", k.Client, k.Resource, k.Kind, w[k], float64(w[k])/float64(per))
	}
}

// ReadWritesSettled reads the audit log from offset once the writes of a phase have landed in
// it: it reads until a second passes without a new write by kubenova (the manager or an agent).
func ReadWritesSettled(path string, offset int64) (Writes, int64, error) {
	all := Writes{}
	for quiet := 0; quiet < 2; {
		w, next, err := ReadWrites(path, offset)
		if err != nil {
			return nil, offset, err
		}
		for k, n := range w {
			all[k] += n
		}
		if w.Total(ByKubenova) == 0 {
			quiet++
		} else {
			quiet = 0
		}
		offset = next
		time.Sleep(500 * time.Millisecond) // the audit log is a file: there is nothing to wait on
	}
	return all, offset, nil
}

// ByKubenova keeps the writes of kubenova's own programs.
func ByKubenova(k WriteKey) bool { return k.Client == "manager" || k.Client == "agent" }

// InstanceWrites keeps kubenova's writes to Instances that the API server accepted, Events
// apart.
func InstanceWrites(k WriteKey) bool {
	return ByKubenova(k) && k.Resource == "instances" && !strings.Contains(k.Kind, "/")
}
