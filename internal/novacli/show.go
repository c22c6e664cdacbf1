package novacli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/printers"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

func newShowCommand(o *options) *cobra.Command {
	printFlags := genericclioptions.NewPrintFlags("").WithTypeSetter(o.scheme)
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show an instance's states, sizing, conditions and requests, as nova show does",
		Example: `  # Show an instance
  kubectl nova show web

  # Show it as JSON
  kubectl nova show web -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runShow(cmd.Context(), printFlags, args[0])
		},
	}
	printFlags.AddFlags(cmd)
	return cmd
}

func (o *options) runShow(ctx context.Context, printFlags *genericclioptions.PrintFlags, name string) error {
	c, key, err := o.instanceKey(name)
	if err != nil {
		return err
	}
	inst := &v1.Instance{}
	if err := c.Get(ctx, key, inst); err != nil {
		return err
	}
	if !humanOutput(printFlags) {
		printer, err := printFlags.ToPrinter()
		if err != nil {
			return err
		}
		return printer.PrintObj(inst, o.streams.Out)
	}
	return renderShow(o.streams.Out, inst)
}

// property is one row of the show table.
type property struct{ name, value string }

// renderShow writes the Property/Value table of nova show.
func renderShow(out io.Writer, inst *v1.Instance) error {
	w := printers.GetNewTabWriter(out)
	_, _ = fmt.Fprintln(w, "PROPERTY\tVALUE")
	for _, p := range showProperties(inst) {
		_, _ = fmt.Fprintf(w, "%s\t%s\n", p.name, p.value)
	}
	return w.Flush()
}

// showProperties lists the rows: the states first, as they answer "what is it doing", then
// sizing, then why (conditions, fault) and what became of the last requests.
func showProperties(inst *v1.Instance) []property {
	st := &inst.Status
	props := []property{
		{"name", inst.Name},
		{"namespace", inst.Namespace},
		{"uid", orDash(string(inst.UID))},
		{"created", formatTime(inst.CreationTimestamp.Time)},
		{"vmState", orDash(string(st.VMState))},
		{"taskState", orDash(string(st.TaskState))},
		{"powerState", powerStateValue(st)},
		{"node", orDash(st.NodeName)},
		{"flavor", flavorValue(inst)},
		{"image", imageValue(inst)},
		{"locked", lockedValue(&inst.Spec)},
		{"spec powerState", string(lifecycle.Desired(&inst.Spec))},
	}
	if g := inst.Spec.ServerGroup; g != "" {
		props = append(props, property{"serverGroup", g})
	}
	if e := inst.Spec.EvictionStrategy; e != "" {
		props = append(props, property{"evictionStrategy", string(e)})
	}
	// One line per NIC, as the guest names them (eth0 first): network, MAC and addresses.
	for i, nic := range st.Networks {
		addrs := "no address seen yet"
		if len(nic.IPAddresses) > 0 {
			addrs = strings.Join(nic.IPAddresses, ", ")
		}
		props = append(props, property{fmt.Sprintf("eth%d", i), fmt.Sprintf("network %s, mac %s, %s", nic.Network, nic.MACAddress, addrs)})
	}
	for _, c := range st.Conditions {
		value := fmt.Sprintf("%s (%s)", c.Status, c.Reason)
		if c.Message != "" {
			value += " " + c.Message
		}
		props = append(props, property{"condition " + c.Type, value})
	}
	if f := st.Fault; f != nil {
		value := fmt.Sprintf("%s: %s (at %s", f.Reason, f.Message, formatTime(f.Time.Time))
		if f.Action != "" {
			value += ", action " + string(f.Action)
		}
		props = append(props, property{"fault", value + ")"})
	}
	if pc := st.PowerChange; pc != nil {
		value := fmt.Sprintf("%s -> %s", pc.FromVMState, pc.PowerState)
		if pc.Reason != "" {
			value += " (" + pc.Reason + ")"
		}
		props = append(props, property{"powerChange", value + " at " + formatTime(pc.Time.Time) + ", outside kubenova"})
	}
	if r := inst.Spec.RebootRequest; r != nil {
		props = append(props, property{"rebootRequest", fmt.Sprintf("%s at %s: %s",
			rebootType(r.Type), formatMicro(r.RequestedAt), requestValue(st.RebootRequest, r.RequestedAt.Time))})
	}
	if r := inst.Spec.StartRequest; r != nil {
		props = append(props, property{"startRequest", fmt.Sprintf("at %s: %s",
			formatMicro(r.RequestedAt), requestValue(st.StartRequest, r.RequestedAt.Time))})
	}
	if r := inst.Spec.RebuildRequest; r != nil {
		props = append(props, property{"rebuildRequest", fmt.Sprintf("at %s: %s",
			formatMicro(r.RequestedAt), requestValue(st.RebuildRequest, r.RequestedAt.Time))})
	}
	if r := inst.Spec.ResizeRequest; r != nil {
		props = append(props, property{"resizeRequest", fmt.Sprintf("%s at %s: %s",
			r.Decision, formatMicro(r.RequestedAt), requestValue(st.ResizeRequest, r.RequestedAt.Time))})
	}
	if rs := st.Resize; rs != nil {
		props = append(props, property{"resize", resizeValue(rs)})
	}
	if st.RevertedFlavor != "" {
		props = append(props, property{"revertedFlavor", st.RevertedFlavor + " (not resized to again until spec.flavor changes)"})
	}
	if a := st.SnapshotRequest; a != nil {
		value := fmt.Sprintf("snapshot %s: %s", a.Name, a.Result)
		if a.Message != "" {
			value += " (" + a.Message + ")"
		}
		props = append(props, property{"lastSnapshot", value})
	}
	if a := st.MigrationRequest; a != nil {
		props = append(props, property{"lastMigration", migrationValue(a, st.Task)})
	}
	if img := st.RescueImage; img != nil {
		props = append(props, property{"rescueImage", imageName(img.ImageReference)})
	}
	if img := st.ShelvedImage; img != nil {
		value := imageName(*img)
		if st.ShelvedAt != nil {
			value += " (shelved at " + formatTime(st.ShelvedAt.Time) + ")"
		}
		props = append(props, property{"shelvedImage", value})
	}
	if st.LaunchedAt != nil {
		props = append(props, property{"launchedAt", formatTime(st.LaunchedAt.Time)})
	}
	if a := st.AgentReport; a != nil && a.ConsoleLogPath != "" {
		props = append(props, property{"consoleLog", a.ConsoleLogPath + " on " + orDash(a.NodeName)})
	}
	return props
}

func powerStateValue(st *v1.InstanceStatus) string {
	value := orDash(string(st.PowerState))
	if a := st.AgentReport; a != nil && a.PowerReason != "" {
		value += " (" + a.PowerReason + ")"
	}
	return value
}

// flavorValue shows the applied flavor, which is what the instance really has; spec.flavor only
// differs during a resize or before the launch sized it.
func flavorValue(inst *v1.Instance) string {
	f := inst.Status.Flavor
	if f == nil {
		return orDash(inst.Spec.Flavor) + " (not applied yet)"
	}
	disk := fmt.Sprintf("%d GiB disk", f.DiskGiB)
	if f.DiskGiB == 0 {
		disk = "image-sized disk"
	}
	value := fmt.Sprintf("%s (%d vCPU, %d MiB RAM, %s)", f.Name, f.VCPUs, f.MemoryMiB, disk)
	if inst.Spec.Flavor != f.Name {
		value += "; spec asks for " + inst.Spec.Flavor
	}
	return value
}

func imageValue(inst *v1.Instance) string {
	img := inst.Status.Image
	if img == nil {
		return imageName(inst.Spec.Image) + " (not applied yet)"
	}
	if !img.SameImage(inst.Spec.Image) {
		return imageName(img.ImageReference) + "; spec asks for " + imageName(inst.Spec.Image)
	}
	return imageName(img.ImageReference)
}

// imageName shows a ClusterImage apart from an Image of the namespace.
func imageName(ref v1.ImageReference) string {
	if ref.ImageKindOrDefault() == v1.KindClusterImage {
		return orDash(ref.Name) + " (cluster image)"
	}
	return orDash(ref.Name)
}

func lockedValue(spec *v1.InstanceSpec) string {
	if !spec.Locked {
		return "false"
	}
	if spec.LockedReason == "" {
		return "true"
	}
	return "true (" + spec.LockedReason + ")"
}

func rebootType(t v1.RebootType) string {
	if t == "" {
		return string(v1.RebootSoft)
	}
	return string(t)
}

// requestValue says what became of the request stamped at; an acknowledgement of an older
// stamp says nothing about this one.
func requestValue(ack *v1.RequestStatus, at time.Time) string {
	if ack == nil || !sameStamp(ack.RequestedAt.Time, at) {
		return "not acknowledged yet"
	}
	value := string(ack.Result)
	if ack.TaskID != 0 {
		value += fmt.Sprintf(" (task %d)", ack.TaskID)
	}
	if ack.Reason != "" {
		value += " " + ack.Reason
	}
	if ack.Message != "" {
		value += ": " + ack.Message
	}
	return value
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// formatMicro keeps the microseconds: they tell two requests of one second apart.
func formatMicro(t metav1.MicroTime) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(metav1.RFC3339Micro)
}

// migrationValue says where the last Migration the instance served took it, or is taking it:
// "migration web-x7k2p: Succeeded, host-1 -> host-2 (block migration)", with the progress of
// a move in flight and the reason of a refusal or failure.
func migrationValue(a *v1.ObjectRequestStatus, task *v1.Task) string {
	value := fmt.Sprintf("migration %s: %s", a.Name, a.Result)
	if a.TargetNode != "" {
		value += fmt.Sprintf(", %s -> %s", orDash(a.SourceNode), a.TargetNode)
		switch {
		case a.RebuiltFromImage:
			value += " (rebuilt from its image)"
		case a.BlockMigration:
			value += " (block migration)"
		}
	}
	if a.Result == v1.RequestAccepted && task != nil && task.ID == a.TaskID {
		value += ", " + string(task.Action) + " in flight"
	}
	if a.Reason != "" {
		value += ": " + a.Reason
	}
	if a.Message != "" {
		value += " (" + a.Message + ")"
	}
	return value
}

// resizeValue says what a resize or cold migration in progress does: "Resize m1.tiny ->
// m1.small, host-1 -> host-3 (ImageStore), was Active, resized at ...: confirm or revert".
func resizeValue(rs *v1.ResizeStatus) string {
	value := fmt.Sprintf("%s %s -> %s, %s -> %s (%s), was %s", rs.Action, rs.OldFlavor.Name, rs.Flavor.Name,
		rs.SourceNode, rs.TargetNode, rs.DiskTransfer, rs.PreviousVMState)
	if rs.MigrationName != "" {
		value += ", migration " + rs.MigrationName
	}
	if rs.ResizedAt != nil {
		value += ", resized at " + formatTime(rs.ResizedAt.Time) + ": confirm or revert (kubectl nova resize NAME --confirm|--revert)"
	}
	return value
}
