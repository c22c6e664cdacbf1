package novacli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newInstanceActionListCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:     "instance-action-list NAME",
		Aliases: []string{"actions"},
		Short:   "Tell what happened to an instance and when, as nova instance-action-list does",
		Long: "instance-action-list reads the instance's Events (what kubenova's manager and agents did and\n" +
			"refused, each with a searchable reason) and its status (the task in flight, the fault),\n" +
			"oldest first. The history is as long as the cluster keeps Events (kube-apiserver's\n" +
			"--event-ttl, one hour by default); ship Events to a log store to keep more.",
		Example: `  # What happened to web
  kubectl nova instance-action-list web

  # Only the failures and refusals
  kubectl nova instance-action-list web | grep Warning`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runInstanceActionList(cmd.Context(), args[0])
		},
	}
}

// instanceAction is one row of the history.
type instanceAction struct {
	at                            time.Time
	action, reason, kind, by, msg string
}

func (o *options) runInstanceActionList(ctx context.Context, name string) error {
	c, key, err := o.instanceKey(name)
	if err != nil {
		return err
	}
	inst := &v1.Instance{}
	if err := c.Get(ctx, key, inst); err != nil {
		return err
	}
	// This instance's Events only: not those of an earlier instance of the same name.
	var events corev1.EventList
	if err := c.List(ctx, &events, client.InNamespace(inst.Namespace),
		client.MatchingFields{"involvedObject.uid": string(inst.UID)}); err != nil {
		return err
	}
	return renderActions(o.streams.Out, instanceActions(inst, events.Items))
}

// instanceActions merges the Events with what status says is under way, oldest first.
func instanceActions(inst *v1.Instance, events []corev1.Event) []instanceAction {
	var rows []instanceAction
	for i := range events {
		e := &events[i]
		by := e.ReportingController
		if by == "" {
			by = e.Source.Component
		}
		msg := e.Message
		if n := eventCount(e); n > 1 {
			msg = fmt.Sprintf("%s (%d times, last %s)", msg, n, formatTime(lastSeen(e)))
		}
		rows = append(rows, instanceAction{at: firstSeen(e), action: orDash(e.Action), reason: e.Reason, kind: e.Type, by: orDash(by), msg: msg})
	}
	st := &inst.Status
	if t := st.Task; t != nil {
		rows = append(rows, instanceAction{at: t.StartedAt.Time, action: string(t.Action), reason: "InProgress", kind: corev1.EventTypeNormal,
			by: "status", msg: fmt.Sprintf("task %d under way (task state %s)", t.ID, orDash(string(st.TaskState)))})
	}
	if f := st.Fault; f != nil {
		rows = append(rows, instanceAction{at: f.Time.Time, action: orDash(string(f.Action)), reason: f.Reason, kind: corev1.EventTypeWarning,
			by: "status", msg: "fault: " + f.Message})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].at.Before(rows[j].at) })
	return rows
}

func renderActions(out io.Writer, rows []instanceAction) error {
	w := printers.GetNewTabWriter(out)
	_, _ = fmt.Fprintln(w, "TIME\tACTION\tREASON\tTYPE\tBY\tMESSAGE")
	for _, r := range rows {
		_, _ = fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", formatTime(r.at), r.action, r.reason, r.kind, r.by,
			strings.ReplaceAll(r.msg, "\n", " "))
	}
	return w.Flush()
}

// firstSeen, lastSeen and eventCount read an Event written through either API: events.k8s.io
// (eventTime, series) as kubenova writes them, or core/v1 (first and last timestamps, count).
func firstSeen(e *corev1.Event) time.Time {
	switch {
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	}
	return e.CreationTimestamp.Time
}

func lastSeen(e *corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	}
	return firstSeen(e)
}

func eventCount(e *corev1.Event) int32 {
	if e.Series != nil {
		return e.Series.Count
	}
	return e.Count
}
