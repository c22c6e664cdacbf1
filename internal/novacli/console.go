package novacli

import (
	"context"
	"errors"
	"io"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/kubenova/kubenova/internal/consolelog"
)

func newConsoleLogCommand(o *options) *cobra.Command {
	var tail int64
	var follow bool
	cmd := &cobra.Command{
		Use:   "console-log NAME",
		Short: "Print an instance's serial console log, as nova console-log does",
		Long: "console-log prints what the guest wrote to its serial console. The API server checks that you\n" +
			"may get instances/log (group subresources.compute.kubenova.io) in the instance's namespace,\n" +
			"which the view, edit and admin roles grant; the kubenova manager fetches the log from the\n" +
			"instance's node. With -f it goes on until Ctrl-C, or until the instance leaves its node.",
		Example: `  # The whole log
  kubectl nova console-log web

  # The last 20 lines, then what the guest prints next
  kubectl nova console-log web --tail 20 -f`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail < -1 {
				return errors.New("--tail must be a number of lines, or -1 for all of them")
			}
			return o.runConsoleLog(cmd.Context(), args[0], consolelog.Options{TailLines: tail, Follow: follow})
		},
	}
	cmd.Flags().Int64Var(&tail, "tail", -1, "how many of the last lines to print (Nova's --length); -1 prints all")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "go on printing what the guest prints")
	return cmd
}

func (o *options) runConsoleLog(ctx context.Context, name string, opts consolelog.Options) error {
	ns, err := o.namespace()
	if err != nil {
		return err
	}
	body, err := o.openConsoleLog(ctx, ns, name, opts)
	if err != nil {
		return err
	}
	defer func() { _ = body.Close() }()
	_, err = io.Copy(o.streams.Out, body)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// clusterConsoleLog asks the API server for the log, the way kubectl logs does for a pod.
func (o *options) clusterConsoleLog(ctx context.Context, namespace, name string, opts consolelog.Options) (io.ReadCloser, error) {
	cfg, err := o.configFlags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	req := cs.Discovery().RESTClient().Get().
		AbsPath("/apis", consolelog.APIGroup, consolelog.APIVersion, "namespaces", namespace, "instances", name, consolelog.Subresource)
	for key, values := range opts.Query() {
		req = req.Param(key, values[0])
	}
	return req.Stream(ctx)
}
