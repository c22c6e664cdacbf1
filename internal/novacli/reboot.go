package novacli

import (
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newRebootCommand(o *options) *cobra.Command {
	var (
		wf   waitFlags
		hard bool
	)
	cmd := &cobra.Command{
		Use:   "reboot NAME",
		Short: "Reboot an instance, softly through ACPI or --hard as a power cycle (nova reboot)",
		Example: verbExample("reboot", "Reboot",
			"  # Power-cycle web, for a guest that does not answer ACPI\n  kubectl nova reboot web --hard --wait"),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := rebootRequest(args[0], hard, o.now())
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), req, wf)
		},
	}
	cmd.Flags().BoolVar(&hard, "hard", false, "Power-cycle the instance instead of asking its guest through ACPI.")
	wf.addTo(cmd)
	return cmd
}

// rebootRequest is the write of a reboot of instance name at time now.
func rebootRequest(name string, hard bool, now time.Time) (request, error) {
	t := v1.RebootSoft
	if hard {
		t = v1.RebootHard
	}
	s := stamp(now)
	body, err := rebootPatch(t, s)
	if err != nil {
		return request{}, err
	}
	return request{name: name, verb: "reboot", body: body, stamped: rebootStamped(s)}, nil
}
