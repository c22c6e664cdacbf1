package novacli

import (
	"github.com/spf13/cobra"
)

func newLockCommand(o *options) *cobra.Command {
	var (
		wf     waitFlags
		reason string
	)
	cmd := &cobra.Command{
		Use:   "lock NAME",
		Short: "Lock an instance: the API server then refuses every change but unlocking, and its deletion, except from administrators (nova lock)",
		Example: verbExample("lock", "Lock",
			"  # Lock web, saying why\n  kubectl nova lock web --reason \"under audit\""),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			body, err := lockPatch(reason)
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), request{name: args[0], verb: "lock", body: body}, wf)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "Why the instance is locked, for whoever finds it locked.")
	wf.addTo(cmd)
	return cmd
}

func newUnlockCommand(o *options) *cobra.Command {
	var wf waitFlags
	cmd := &cobra.Command{
		Use:               "unlock NAME",
		Short:             "Unlock a locked instance (nova unlock)",
		Example:           verbExample("unlock", "Unlock"),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			body, err := unlockPatch()
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), request{name: args[0], verb: "unlock", body: body}, wf)
		},
	}
	wf.addTo(cmd)
	return cmd
}
