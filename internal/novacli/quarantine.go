package novacli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/cli-runtime/pkg/printers"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newQuarantineListCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "quarantine-list",
		Short: "List the disks of vanished instances that the nodes keep in quarantine (administrators)",
		Long: "quarantine-list shows, from every Hypervisor, the files of instances that vanished from the\n" +
			"API without their own terminate (a finalizer removed by hand, an etcd restored from an older\n" +
			"backup) and that the node's agent therefore kept instead of deleting: the instance they were,\n" +
			"since when, how much space they take and where. Nodes that share their storage show one row.\n" +
			"It reads Hypervisors, which only cloud administrators may.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.runQuarantineList(cmd.Context())
		},
	}
}

func (o *options) runQuarantineList(ctx context.Context) error {
	c, err := o.newClient()
	if err != nil {
		return err
	}
	var hvs v1.HypervisorList
	if err := c.List(ctx, &hvs); err != nil {
		return err
	}
	return renderQuarantineTable(o.streams.Out, hvs.Items, o.now())
}

// quarantineRow is one quarantined directory, seen by one or more nodes sharing its storage.
type quarantineRow struct {
	v1.QuarantinedInstance
	nodes []string
	path  string
}

// renderQuarantineTable prints the quarantined instance directories of every node, oldest first,
// one row per directory however many nodes share its storage, and how many were not listed.
func renderQuarantineTable(out io.Writer, hvs []v1.Hypervisor, now time.Time) error {
	rows := map[string]*quarantineRow{}
	unlisted := 0
	for i := range hvs {
		hv := &hvs[i]
		storage := hv.Status.StorageID
		if storage == "" {
			storage = "node:" + hv.Name
		}
		unlisted += int(hv.Status.QuarantinedCount) - len(hv.Status.Quarantined)
		for _, q := range hv.Status.Quarantined {
			key := storage + "/" + q.UID
			r, ok := rows[key]
			if !ok {
				r = &quarantineRow{QuarantinedInstance: q, path: strings.TrimSuffix(hv.Status.StorageRoot, "/") + "/quarantine/" + q.UID}
				rows[key] = r
			}
			r.nodes = append(r.nodes, hv.Name)
		}
	}
	sorted := make([]*quarantineRow, 0, len(rows))
	for _, r := range rows {
		sort.Strings(r.nodes)
		sorted = append(sorted, r)
	}
	sort.Slice(sorted, func(i, j int) bool {
		if !sorted[i].Since.Equal(&sorted[j].Since) {
			return sorted[i].Since.Before(&sorted[j].Since)
		}
		return sorted[i].UID < sorted[j].UID
	})
	w := printers.GetNewTabWriter(out)
	_, _ = fmt.Fprintln(w, "UID\tINSTANCE\tNODES\tSIZE\tSINCE\tPATH\tREASON")
	for _, r := range sorted {
		instance := "-"
		if r.Name != "" {
			instance = r.Namespace + "/" + r.Name
		}
		_, _ = fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.UID, instance, strings.Join(r.nodes, ","),
			resource.NewQuantity(r.Bytes, resource.BinarySI).String(), age(r.Since.Time, now), r.path, r.Reason)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if unlisted > 0 {
		_, err := fmt.Fprintf(out, "(%d more not listed in the Hypervisors' status: see <storageRoot>/quarantine on their nodes)\n", unlisted)
		return err
	}
	return nil
}
