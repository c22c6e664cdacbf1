package novacli

import (
	"github.com/spf13/cobra"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newRescueCommand(o *options) *cobra.Command {
	var (
		wf           waitFlags
		image        string
		clusterImage bool
	)
	cmd := &cobra.Command{
		Use:   "rescue NAME",
		Short: "Boot an instance from a rescue image with its own disk attached second (nova rescue)",
		Long: "rescue sets spec.rescue: the instance boots a rescue image (--image, else the cluster's\n" +
			"default rescue image, else its own image) with its root disk as the second disk, so the\n" +
			"rescue system can read and repair it. unrescue boots the root disk again.",
		Example: verbExample("rescue", "Rescue",
			"  # Rescue web with the shared image rescue-tools\n  kubectl nova rescue web --image rescue-tools --cluster-image --wait"),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			body, err := rescuePatch(image, clusterImage)
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), request{name: args[0], verb: "rescue", body: body}, wf)
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "Rescue image: an Image of the namespace (default: the cluster's rescue image, else the instance's own).")
	cmd.Flags().BoolVar(&clusterImage, "cluster-image", false, "--image names a ClusterImage.")
	wf.addTo(cmd)
	return cmd
}

func newUnrescueCommand(o *options) *cobra.Command {
	var wf waitFlags
	cmd := &cobra.Command{
		Use:               "unrescue NAME",
		Short:             "Boot a rescued instance from its own root disk again (nova unrescue)",
		Example:           verbExample("unrescue", "Unrescue"),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			body, err := specPatch(map[string]any{"rescue": nil})
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), request{name: args[0], verb: "unrescue", body: body}, wf)
		},
	}
	wf.addTo(cmd)
	return cmd
}

// rescuePatch asks for a rescue, with image if set.
func rescuePatch(image string, clusterImage bool) ([]byte, error) {
	rescue := v1.RescueSpec{}
	if image != "" {
		kind := v1.KindImage
		if clusterImage {
			kind = v1.KindClusterImage
		}
		rescue.Image = &v1.ImageReference{Kind: kind, Name: image}
	}
	return specPatch(map[string]any{"rescue": rescue})
}
