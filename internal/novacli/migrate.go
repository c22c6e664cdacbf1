package novacli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newMigrateCommand(o *options) *cobra.Command {
	var (
		wf    waitFlags
		live  bool
		block bool
		node  string
	)
	cmd := &cobra.Command{
		Use:   "migrate NAME [--live [--block-migrate]] [--node NODE]",
		Short: "Move an instance to another node (nova migrate, nova live-migration)",
		Long: "migrate creates a Migration of the instance. With --live the guest keeps running while\n" +
			"it moves: only its memory when the two nodes share storage, its memory and disks with\n" +
			"--block-migrate (the default chooses from the nodes' storage). Without --live it is a\n" +
			"cold migration: the guest is powered off, its disk moved, and it boots on the target,\n" +
			"where it waits in Resized until kubectl nova resize NAME --confirm (or --revert). Without\n" +
			"--node the scheduler chooses the target among the other nodes.",
		Example: `  # Cold-migrate web, and confirm once it runs on its new node
  kubectl nova migrate web --wait && kubectl nova resize web --confirm

  # Live-migrate web to a node the scheduler chooses, and follow it
  kubectl nova migrate web --live --wait

  # Live-migrate web to node-3, copying its disk
  kubectl nova migrate web --live --block-migrate --node node-3`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !live {
				if cmd.Flags().Changed("block-migrate") {
					return fmt.Errorf("--block-migrate applies to live migrations (--live) only")
				}
				spec := v1.MigrationSpec{InstanceName: args[0], Type: v1.MigrationCold, TargetNode: node}
				return o.runMigrate(cmd.Context(), spec, wf)
			}
			mode := v1.BlockMigrationAuto
			if cmd.Flags().Changed("block-migrate") {
				mode = v1.BlockMigrationDisabled
				if block {
					mode = v1.BlockMigrationEnabled
				}
			}
			spec := v1.MigrationSpec{InstanceName: args[0], Type: v1.MigrationLive, TargetNode: node, BlockMigration: mode}
			return o.runMigrate(cmd.Context(), spec, wf)
		},
	}
	cmd.Flags().BoolVar(&live, "live", false, "Move the instance while its guest runs.")
	cmd.Flags().BoolVar(&block, "block-migrate", false, "Copy the disks too (--block-migrate=false: only memory, the nodes must share storage). Default: decided from the nodes' storage.")
	cmd.Flags().StringVar(&node, "node", "", "The node to move to; default: the scheduler's choice.")
	wf.addWithUsage(cmd, "Follow the migration until it succeeds; fail if it fails.", 30*time.Minute)
	return cmd
}

func (o *options) runMigrate(ctx context.Context, spec v1.MigrationSpec, wf waitFlags) error {
	c, key, err := o.instanceKey(spec.InstanceName)
	if err != nil {
		return err
	}
	// Say so at once when the instance does not exist, rather than leave a failed Migration.
	if err := c.Get(ctx, key, &v1.Instance{}); err != nil {
		return err
	}
	mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, GenerateName: spec.InstanceName + "-"}, Spec: spec}
	if err := c.Create(ctx, mig); err != nil {
		return err
	}
	out := o.streams.Out
	_, _ = fmt.Fprintf(out, "migration.compute.kubenova.io/%s created\n", mig.Name)
	if !wf.wait {
		return nil
	}
	if err := waitForMigration(ctx, out, mig, func(ctx context.Context) error {
		return c.Get(ctx, client.ObjectKeyFromObject(mig), mig)
	}, o.pollInterval, wf.timeout); err != nil {
		return err
	}
	s := mig.Status
	if spec.Type == v1.MigrationCold {
		_, _ = fmt.Fprintf(out, "%s runs on %s (from %s); confirm with kubectl nova resize %s --confirm, or --revert\n",
			spec.InstanceName, s.TargetNode, s.SourceNode, spec.InstanceName)
		return nil
	}
	how := "shared storage"
	if s.BlockMigration {
		how = "block migration"
	}
	_, _ = fmt.Fprintf(out, "%s runs on %s (from %s, %s): %d ms in all, %d ms of downtime\n",
		spec.InstanceName, s.TargetNode, s.SourceNode, how, s.TotalMillis, s.DowntimeMillis)
	return nil
}

// waitForMigration reads the migration (get fills mig) every interval until it Succeeded (nil)
// or Failed (the error says why), or timeout passes, printing each new phase and progress.
func waitForMigration(ctx context.Context, out io.Writer, mig *v1.Migration, get func(context.Context) error, interval, timeout time.Duration) error {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var shown string
	for {
		err := get(waitCtx)
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("migration %s was deleted while waiting", mig.Name)
		case err == nil:
			now := migrationProgressLine(mig)
			if now != shown {
				shown = now
				_, _ = fmt.Fprintln(out, now)
			}
			switch mig.Status.Phase {
			case v1.MigrationSucceeded:
				return nil
			case v1.MigrationFinalizing:
				if mig.Spec.Type == v1.MigrationCold && mig.Status.Reason == coldMigrationResized {
					return nil // the instance waits in Resized for its confirmation
				}
			case v1.MigrationFailed:
				return fmt.Errorf("migration %s failed: %s: %s", mig.Name, mig.Status.Reason, mig.Status.Message)
			}
		}
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("timed out after %s waiting for migration %s (it is %s)", timeout, mig.Name, orDash(string(mig.Status.Phase)))
		case <-ticker.C:
		}
	}
}

// migrationProgressLine is what --wait prints of a migration: its phase, and its progress
// while it copies.
func migrationProgressLine(mig *v1.Migration) string {
	line := fmt.Sprintf("%s: %s", mig.Name, orDash(string(mig.Status.Phase)))
	if mig.Status.Phase == v1.MigrationMigrating {
		line += fmt.Sprintf(" %d%%", mig.Status.ProgressPercent)
	}
	return line
}

func newMigrationListCommand(o *options) *cobra.Command {
	var allNamespaces bool
	var instance string
	cmd := &cobra.Command{
		Use:   "migration-list [--instance NAME]",
		Short: "List migrations (nova migration-list)",
		Long: "migration-list shows the namespace's Migrations, newest first: the instance, the move's\n" +
			"type, its phase, source and target, and libvirt's figures.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.runMigrationList(cmd.Context(), allNamespaces, instance)
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "List the migrations of every namespace.")
	cmd.Flags().StringVar(&instance, "instance", "", "Only the migrations of this instance.")
	return cmd
}

func (o *options) runMigrationList(ctx context.Context, allNamespaces bool, instance string) error {
	c, opts, err := o.listScope(allNamespaces)
	if err != nil {
		return err
	}
	var list v1.MigrationList
	if err := c.List(ctx, &list, opts...); err != nil {
		return err
	}
	items := list.Items[:0]
	for _, m := range list.Items {
		if instance == "" || m.Spec.InstanceName == instance {
			items = append(items, m)
		}
	}
	return renderMigrationTable(o.streams.Out, items, allNamespaces, o.now())
}

// renderMigrationTable prints migrations as nova migration-list does, newest first.
func renderMigrationTable(out io.Writer, items []v1.Migration, allNamespaces bool, now time.Time) error {
	sort.SliceStable(items, func(i, j int) bool {
		return items[j].CreationTimestamp.Before(&items[i].CreationTimestamp)
	})
	w := printers.GetNewTabWriter(out)
	header := []string{"NAME", "INSTANCE", "TYPE", "PHASE", "SOURCE", "TARGET", "BLOCK", "PROGRESS", "TOTAL", "DOWNTIME", "AGE"}
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	_, _ = fmt.Fprintln(w, strings.Join(header, "\t"))
	for i := range items {
		m := &items[i]
		s := m.Status
		row := []string{m.Name, m.Spec.InstanceName, string(m.Spec.Type), orDash(string(s.Phase)), orDash(s.SourceNode), orDash(s.TargetNode),
			fmt.Sprint(s.BlockMigration), fmt.Sprintf("%d%%", s.ProgressPercent), millis(s.TotalMillis), millis(s.DowntimeMillis),
			age(m.CreationTimestamp.Time, now)}
		if allNamespaces {
			row = append([]string{m.Namespace}, row...)
		}
		_, _ = fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}

func millis(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return (time.Duration(ms) * time.Millisecond).String()
}

func newEvacuateCommand(o *options) *cobra.Command {
	var (
		wf        waitFlags
		target    string
		forceDown bool
	)
	cmd := &cobra.Command{
		Use:   "evacuate NODE [--target NODE] [--force-down]",
		Short: "Rebuild every instance of a failed node elsewhere (nova host-evacuate)",
		Long: "evacuate creates one Migration of type Evacuate per instance of NODE, in the instance's\n" +
			"namespace. The manager carries them out only once NODE is fenced (its Hypervisor forced\n" +
			"down, or the Node tainted node.kubernetes.io/out-of-service) and down: never while it may\n" +
			"still run the guests. --force-down fences it first: say so only when NODE is powered off.\n" +
			"Instances on storage NODE shares with the target keep their disks; the others are rebuilt\n" +
			"from their images, and their disks' data is lost.",
		Example: `  # Fence the failed node host-1 and evacuate its instances, following them
  kubectl nova evacuate host-1 --force-down --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runEvacuate(cmd.Context(), args[0], target, forceDown, wf)
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "The node to rebuild the instances on; default: the scheduler's choice for each.")
	cmd.Flags().BoolVar(&forceDown, "force-down", false, "Fence NODE first (Hypervisor spec.forcedDown): the administrator asserts it runs nothing any more.")
	wf.addWithUsage(cmd, "Follow the evacuations until each has succeeded or failed; fail if any failed.", 30*time.Minute)
	return cmd
}

func (o *options) runEvacuate(ctx context.Context, node, target string, forceDown bool, wf waitFlags) error {
	c, err := o.newClient()
	if err != nil {
		return err
	}
	out := o.streams.Out
	hv := &v1.Hypervisor{}
	if err := c.Get(ctx, client.ObjectKey{Name: node}, hv); err != nil {
		return err
	}
	if forceDown && !hv.Spec.ForcedDown {
		patch := client.MergeFrom(hv.DeepCopy())
		hv.Spec.ForcedDown = true
		if err := c.Patch(ctx, hv, patch); err != nil {
			return fmt.Errorf("force %s down: %w", node, err)
		}
		_, _ = fmt.Fprintf(out, "hypervisor.compute.kubenova.io/%s forced down\n", node)
	}
	var list v1.InstanceList
	if err := c.List(ctx, &list, client.MatchingFields{"status.nodeName": node}); err != nil {
		return err
	}
	var migs []*v1.Migration
	for i := range list.Items {
		inst := &list.Items[i]
		if !inst.DeletionTimestamp.IsZero() {
			continue
		}
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, GenerateName: inst.Name + "-evacuate-"},
			Spec: v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationEvacuate, TargetNode: target}}
		if err := c.Create(ctx, mig); err != nil {
			return fmt.Errorf("evacuate %s/%s: %w", inst.Namespace, inst.Name, err)
		}
		_, _ = fmt.Fprintf(out, "migration.compute.kubenova.io/%s created (%s/%s)\n", mig.Name, inst.Namespace, inst.Name)
		migs = append(migs, mig)
	}
	if len(migs) == 0 {
		_, _ = fmt.Fprintf(out, "no instances on %s\n", node)
		return nil
	}
	if !wf.wait {
		return nil
	}
	var failed []string
	for _, mig := range migs {
		err := waitForMigration(ctx, out, mig, func(ctx context.Context) error {
			return c.Get(ctx, client.ObjectKeyFromObject(mig), mig)
		}, o.pollInterval, wf.timeout)
		if err != nil {
			failed = append(failed, err.Error())
			continue
		}
		_, _ = fmt.Fprintf(out, "%s/%s runs on %s\n", mig.Namespace, mig.Spec.InstanceName, mig.Status.TargetNode)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d evacuations failed:\n  %s", len(failed), len(migs), strings.Join(failed, "\n  "))
	}
	return nil
}

// coldMigrationResized is the reason of a cold migration whose instance waits in Resized
// (the manager's controllers.ReasonResized).
const coldMigrationResized = "Resized"

func newHostEvacuateLiveCommand(o *options) *cobra.Command {
	var (
		wf         waitFlags
		target     string
		block      bool
		maxServers int
	)
	cmd := &cobra.Command{
		Use:   "host-evacuate-live NODE [--target-host NODE] [--block-migrate] [--max-servers N]",
		Short: "Live-migrate every instance off a node without draining it (nova host-evacuate-live)",
		Long: "host-evacuate-live creates one live Migration per running or paused instance of NODE, in\n" +
			"the instance's namespace, as nova host-evacuate-live calls live-migration for each server\n" +
			"of the host. Instances in other states are listed and left. --max-servers starts at most\n" +
			"N moves; with --wait it keeps N in flight until every instance has moved, and fails if\n" +
			"any move failed. Unlike kubectl drain it neither cordons NODE nor evicts its pods, so\n" +
			"the scheduler may place new instances there meanwhile: cordon it first to empty it.",
		Example: `  # Move everything off host-1, three at a time, and follow the moves
  kubectl cordon host-1 && kubectl nova host-evacuate-live host-1 --max-servers 3 --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mode := v1.BlockMigrationAuto
			if cmd.Flags().Changed("block-migrate") {
				mode = v1.BlockMigrationDisabled
				if block {
					mode = v1.BlockMigrationEnabled
				}
			}
			return o.runHostEvacuateLive(cmd.Context(), args[0], v1.MigrationSpec{Type: v1.MigrationLive, TargetNode: target, BlockMigration: mode}, maxServers, wf)
		},
	}
	cmd.Flags().StringVar(&target, "target-host", "", "The node to move the instances to; default: the scheduler's choice for each.")
	cmd.Flags().BoolVar(&block, "block-migrate", false, "Copy the disks too (--block-migrate=false: only memory). Default: decided from the nodes' storage.")
	cmd.Flags().IntVar(&maxServers, "max-servers", 0, "Move at most this many instances at once (0: all at once).")
	wf.addWithUsage(cmd, "Follow the moves until each has succeeded or failed; fail if any failed.", 30*time.Minute)
	return cmd
}

func (o *options) runHostEvacuateLive(ctx context.Context, node string, spec v1.MigrationSpec, maxServers int, wf waitFlags) error {
	c, err := o.newClient()
	if err != nil {
		return err
	}
	out := o.streams.Out
	if err := c.Get(ctx, client.ObjectKey{Name: node}, &v1.Hypervisor{}); err != nil {
		return err
	}
	var list v1.InstanceList
	if err := c.List(ctx, &list, client.MatchingFields{"status.nodeName": node}); err != nil {
		return err
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return client.ObjectKeyFromObject(&list.Items[i]).String() < client.ObjectKeyFromObject(&list.Items[j]).String()
	})
	var queue []*v1.Instance
	for i := range list.Items {
		inst := &list.Items[i]
		switch {
		case !inst.DeletionTimestamp.IsZero():
		case inst.Status.VMState != v1.VMStateActive && inst.Status.VMState != v1.VMStatePaused:
			_, _ = fmt.Fprintf(out, "%s/%s not moved: it is %s (only a running or paused guest moves live)\n", inst.Namespace, inst.Name, inst.Status.VMState)
		default:
			queue = append(queue, inst)
		}
	}
	if len(queue) == 0 {
		_, _ = fmt.Fprintf(out, "no running instances on %s\n", node)
		return nil
	}
	limit := maxServers
	if limit <= 0 || limit > len(queue) {
		limit = len(queue)
	}
	start := func(inst *v1.Instance) (*v1.Migration, error) {
		s := spec
		s.InstanceName = inst.Name
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, GenerateName: inst.Name + "-live-"}, Spec: s}
		if err := c.Create(ctx, mig); err != nil {
			return nil, fmt.Errorf("live-migrate %s/%s: %w", inst.Namespace, inst.Name, err)
		}
		_, _ = fmt.Fprintf(out, "migration.compute.kubenova.io/%s created (%s/%s)\n", mig.Name, inst.Namespace, inst.Name)
		return mig, nil
	}
	if !wf.wait {
		for _, inst := range queue[:limit] {
			if _, err := start(inst); err != nil {
				return err
			}
		}
		for _, inst := range queue[limit:] {
			_, _ = fmt.Fprintf(out, "%s/%s not moved: --max-servers %d\n", inst.Namespace, inst.Name, maxServers)
		}
		return nil
	}
	// Keep limit moves in flight: each ended move starts the next.
	type result struct {
		mig *v1.Migration
		err error
	}
	done := make(chan result)
	follow := func(mig *v1.Migration) {
		err := waitForMigration(ctx, io.Discard, mig, func(ctx context.Context) error {
			return c.Get(ctx, client.ObjectKeyFromObject(mig), mig)
		}, o.pollInterval, wf.timeout)
		done <- result{mig, err}
	}
	inFlight, next := 0, 0
	var failed []string
	for next < len(queue) || inFlight > 0 {
		for inFlight < limit && next < len(queue) {
			mig, err := start(queue[next])
			next++
			if err != nil {
				failed = append(failed, err.Error())
				continue
			}
			inFlight++
			go follow(mig)
		}
		if inFlight == 0 {
			break
		}
		r := <-done
		inFlight--
		if r.err != nil {
			failed = append(failed, r.err.Error())
			continue
		}
		_, _ = fmt.Fprintf(out, "%s/%s runs on %s: %d ms of downtime\n", r.mig.Namespace, r.mig.Spec.InstanceName, r.mig.Status.TargetNode, r.mig.Status.DowntimeMillis)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d live migrations failed:\n  %s", len(failed), len(queue), strings.Join(failed, "\n  "))
	}
	return nil
}
