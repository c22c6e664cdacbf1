package novacli

import (
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newRebuildCommand(o *options) *cobra.Command {
	var (
		wf           waitFlags
		image        string
		clusterImage bool
	)
	cmd := &cobra.Command{
		Use:   "rebuild NAME",
		Short: "Rebuild an instance: a fresh root disk from its image, or from --image (nova rebuild)",
		Long: "rebuild stamps spec.rebuildRequest, and with --image also sets spec.image: the instance\n" +
			"keeps its name, UID and node and boots a fresh root disk made from the image (a\n" +
			"snapshot's image restores what the snapshot holds). Its old disk is deleted once the new\n" +
			"one boots.",
		Example: verbExample("rebuild", "Rebuild",
			"  # Rebuild web from the image web-golden (a snapshot's, say)\n  kubectl nova rebuild web --image web-golden --wait",
			"  # Rebuild web from the shared image debian-12\n  kubectl nova rebuild web --image debian-12 --cluster-image"),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := rebuildRequest(args[0], image, clusterImage, o.now())
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), req, wf)
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "Rebuild from this Image of the namespace (the instance's own image if empty).")
	cmd.Flags().BoolVar(&clusterImage, "cluster-image", false, "--image names a ClusterImage.")
	wf.addTo(cmd)
	return cmd
}

// rebuildRequest is the write of a rebuild of instance name at time now, onto image if set.
func rebuildRequest(name, image string, clusterImage bool, now time.Time) (request, error) {
	s := stamp(now)
	fields := map[string]any{"rebuildRequest": v1.RebuildRequest{RequestedAt: s}}
	if image != "" {
		kind := v1.KindImage
		if clusterImage {
			kind = v1.KindClusterImage
		}
		fields["image"] = v1.ImageReference{Kind: kind, Name: image}
	}
	body, err := specPatch(fields)
	if err != nil {
		return request{}, err
	}
	return request{name: name, verb: "rebuild", body: body, stamped: rebuildStamped(s)}, nil
}
