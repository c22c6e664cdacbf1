package novacli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newResizeCommand(o *options) *cobra.Command {
	var (
		wf              waitFlags
		confirm, revert bool
	)
	cmd := &cobra.Command{
		Use:   "resize NAME FLAVOR | resize NAME --confirm | --revert",
		Short: "Resize an instance to another flavor, then confirm or revert (nova resize, resize-confirm, resize-revert)",
		Long: "resize NAME FLAVOR sets spec.flavor: the guest is powered off, its disk grown to the new\n" +
			"flavor's size, and it boots with the new flavor on the same node (when the manager allows\n" +
			"it and both flavors fit there) or on another. The instance then waits in Resized, the\n" +
			"old disk kept, until --confirm deletes the old disk or --revert boots it again with the\n" +
			"old flavor on the old node (setting spec.flavor back too). A cold migration\n" +
			"(kubectl nova migrate NAME) waits in Resized the same way.",
		Example: `  # Resize web to the flavor m1.large and wait until it runs with it
  kubectl nova resize web m1.large --wait

  # Keep the new flavor: delete the old disk
  kubectl nova resize web --confirm --wait

  # Go back to the old flavor and node, with the disk as it was before the resize
  kubectl nova resize web --revert --wait`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case confirm && revert:
				return errors.New("--confirm and --revert exclude each other")
			case (confirm || revert) && len(args) != 1:
				return errors.New("--confirm and --revert take the instance's name only")
			case !confirm && !revert && len(args) != 2:
				return errors.New("resize takes the instance's name and the new flavor")
			}
			return nil
		},
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			var req request
			var err error
			switch {
			case confirm:
				req, err = resizeDecisionRequest(args[0], v1.ResizeConfirm, o.now())
			case revert:
				req, err = resizeDecisionRequest(args[0], v1.ResizeRevert, o.now())
			default:
				req, err = resizeRequest(args[0], args[1])
			}
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), req, wf)
		},
	}
	cmd.Flags().BoolVar(&confirm, "confirm", false, "Confirm the resize (or cold migration) that waits in Resized.")
	cmd.Flags().BoolVar(&revert, "revert", false, "Revert the resize (or cold migration) that waits in Resized.")
	wf.addWithUsage(cmd, "Follow the instance until it waits in Resized (a resize) or rests where its spec asks (--confirm, --revert); fail if the manager refuses.", 15*time.Minute)
	return cmd
}

// resizeRequest is the write of a resize of instance name to flavor.
func resizeRequest(name, flavor string) (request, error) {
	body, err := specPatch(map[string]any{"flavor": flavor})
	if err != nil {
		return request{}, err
	}
	return request{name: name, verb: "resize", body: body, untilResized: true,
		precheck: func(inst *v1.Instance) error {
			if f := inst.Status.Flavor; f != nil && f.Name == flavor && inst.Spec.Flavor == flavor {
				return fmt.Errorf("instance %s has flavor %s already", name, flavor)
			}
			return nil
		}}, nil
}

// resizeDecisionRequest is the write of a confirmation or revert at time now. A revert of a
// resize also sets spec.flavor back to the old flavor, so that the spec says what runs.
func resizeDecisionRequest(name string, decision v1.ResizeDecision, now time.Time) (request, error) {
	s := stamp(now)
	verb := "resize confirmation"
	if decision == v1.ResizeRevert {
		verb = "resize revert"
	}
	return request{name: name, verb: verb, stamped: resizeStamped(s),
		precheck: func(inst *v1.Instance) error {
			if inst.Status.VMState != v1.VMStateResized || inst.Status.Resize == nil {
				return fmt.Errorf("instance %s is %s, not Resized: there is no resize to %s", name, orDash(string(inst.Status.VMState)),
					map[v1.ResizeDecision]string{v1.ResizeConfirm: "confirm", v1.ResizeRevert: "revert"}[decision])
			}
			return nil
		},
		bodyFor: func(inst *v1.Instance) ([]byte, error) {
			fields := map[string]any{"resizeRequest": v1.ResizeRequest{Decision: decision, RequestedAt: s}}
			if rs := inst.Status.Resize; decision == v1.ResizeRevert && rs != nil && rs.Action == v1.ActionResize {
				fields["flavor"] = rs.OldFlavor.Name
			}
			return specPatch(fields)
		}}, nil
}
