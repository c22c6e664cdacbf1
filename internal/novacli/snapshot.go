package novacli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newSnapshotCommand(o *options) *cobra.Command {
	var (
		wf                 waitFlags
		deleteWithSnapshot bool
	)
	cmd := &cobra.Command{
		Use:   "snapshot NAME [IMAGE]",
		Short: "Save an instance's root disk as a new Image (nova image-create)",
		Long: "snapshot creates a Snapshot of the instance; the manager saves its root disk, while the\n" +
			"guest keeps running, as the Image IMAGE (default NAME-snapshot-<time>), which can launch\n" +
			"and rebuild instances. The Snapshot and the Image share the name.",
		Example: `  # Save web as the image web-2026-11-26 and wait until it is available
  kubectl nova snapshot web web-2026-11-26 --wait`,
		Args:              cobra.RangeArgs(1, 2),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := fmt.Sprintf("%s-snapshot-%s", args[0], o.now().UTC().Format("20060102-150405"))
			if len(args) == 2 {
				name = args[1]
			}
			return o.runSnapshot(cmd.Context(), args[0], name, deleteWithSnapshot, wf)
		},
	}
	cmd.Flags().BoolVar(&deleteWithSnapshot, "delete-image-with-snapshot", false, "Delete the Image when the Snapshot is deleted.")
	wf.addWithUsage(cmd, "Wait until the image is available; fail if the snapshot fails.", 10*time.Minute)
	return cmd
}

func (o *options) runSnapshot(ctx context.Context, instance, name string, deleteWithSnapshot bool, wf waitFlags) error {
	c, key, err := o.instanceKey(instance)
	if err != nil {
		return err
	}
	// Say so at once when the instance does not exist, rather than leave a failed Snapshot.
	if err := c.Get(ctx, key, &v1.Instance{}); err != nil {
		return err
	}
	snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: name},
		Spec: v1.SnapshotSpec{InstanceName: instance, DeleteImageWithSnapshot: deleteWithSnapshot}}
	if err := c.Create(ctx, snap); err != nil {
		return err
	}
	out := o.streams.Out
	_, _ = fmt.Fprintf(out, "snapshot.compute.kubenova.io/%s created (image %s)\n", name, name)
	if !wf.wait {
		return nil
	}
	if err := waitForSnapshot(ctx, out, snap, func(ctx context.Context) error {
		return c.Get(ctx, client.ObjectKeyFromObject(snap), snap)
	}, o.pollInterval, wf.timeout); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(out, "image %s is available (%s)\n", snap.Status.ImageName, bytesValue(snap.Status.SizeBytes))
	return nil
}

// waitForSnapshot reads the snapshot (get fills snap) every interval until it Succeeded (nil) or
// Failed (the error says why), or timeout passes, printing each new phase to out.
func waitForSnapshot(ctx context.Context, out io.Writer, snap *v1.Snapshot, get func(context.Context) error, interval, timeout time.Duration) error {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var phase v1.SnapshotPhase
	for {
		err := get(waitCtx)
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("snapshot %s was deleted while waiting", snap.Name)
		case err == nil:
			if snap.Status.Phase != phase {
				phase = snap.Status.Phase
				_, _ = fmt.Fprintf(out, "%s: %s\n", snap.Name, orDash(string(phase)))
			}
			switch phase {
			case v1.SnapshotSucceeded:
				return nil
			case v1.SnapshotFailed:
				if c := meta.FindStatusCondition(snap.Status.Conditions, v1.ConditionStalled); c != nil {
					return fmt.Errorf("%s: %s", c.Reason, c.Message)
				}
				return fmt.Errorf("snapshot %s failed: %s", snap.Name, snap.Status.Message)
			}
		}
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("timed out after %s waiting for snapshot %s (it is %s)", timeout, snap.Name, orDash(string(phase)))
		case <-ticker.C:
		}
	}
}
