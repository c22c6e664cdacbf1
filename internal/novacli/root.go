// Package novacli is the kubectl nova plugin: Nova's server commands (list, show, start, stop,
// reboot, lock, ...) acting on kubenova's Instance objects.
package novacli

import (
	"context"
	"io"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kubenova/kubenova/internal/consolelog"
	"github.com/kubenova/kubenova/internal/scheme"
)

// resourceRef prefixes the instance names the verbs print, as kubectl names objects.
const resourceRef = "instance.compute.kubenova.io/"

// options is what every verb shares: how to reach the cluster, where to write, and the clock.
type options struct {
	configFlags *genericclioptions.ConfigFlags
	streams     genericiooptions.IOStreams
	scheme      *runtime.Scheme
	// newClient and namespace are replaced in tests, which have no API server.
	newClient func() (client.Client, error)
	namespace func() (string, error)
	// openConsoleLog streams an instance's console log; replaced in tests.
	openConsoleLog func(ctx context.Context, namespace, name string, opts consolelog.Options) (io.ReadCloser, error)
	// now is replaced in tests so that request stamps and ages are fixed.
	now func() time.Time
	// pollInterval is how often --wait reads the instance.
	pollInterval time.Duration
}

func newOptions(streams genericiooptions.IOStreams) *options {
	o := &options{
		configFlags:  genericclioptions.NewConfigFlags(true),
		streams:      streams,
		scheme:       scheme.New(),
		now:          time.Now,
		pollInterval: 250 * time.Millisecond,
	}
	o.newClient = o.clusterClient
	o.openConsoleLog = o.clusterConsoleLog
	o.namespace = func() (string, error) {
		ns, _, err := o.configFlags.ToRawKubeConfigLoader().Namespace()
		return ns, err
	}
	return o
}

// clusterClient builds a client from the kubeconfig flags.
func (o *options) clusterClient() (client.Client, error) {
	cfg, err := o.configFlags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	cfg = rest.CopyConfig(cfg)
	// Print API warnings as kubectl does; controller-runtime's default would log them through a
	// logger this binary never sets up.
	cfg.WarningHandler = rest.NewWarningWriter(o.streams.ErrOut, rest.WarningWriterOptions{Deduplicate: true})
	return client.New(cfg, client.Options{Scheme: o.scheme})
}

// NewRootCommand builds the kubectl nova command tree, writing to streams.
func NewRootCommand(streams genericiooptions.IOStreams) *cobra.Command {
	return newRootCommand(newOptions(streams))
}

func newRootCommand(o *options) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-nova",
		Short: "Operate kubenova instances the way the nova client operates OpenStack servers",
		Long: "kubectl nova lists, shows and operates kubenova Instances with Nova's verbs. Each verb\n" +
			"writes the instance's spec; the kubenova manager carries it out. With --wait a verb\n" +
			"follows the instance until the manager is done, and fails if the manager refuses.",
		Example: `  # List the instances of the current namespace
  kubectl nova list

  # Stop an instance and wait until it is Stopped
  kubectl nova stop web --wait`,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl nova"},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(o.streams.In)
	root.SetOut(o.streams.Out)
	root.SetErr(o.streams.ErrOut)
	o.configFlags.AddFlags(root.PersistentFlags())

	root.AddCommand(newListCommand(o), newShowCommand(o), newInstanceActionListCommand(o), newConsoleLogCommand(o))
	for _, v := range powerVerbs {
		root.AddCommand(newPowerCommand(o, v))
	}
	root.AddCommand(newRebootCommand(o), newLockCommand(o), newUnlockCommand(o))
	root.AddCommand(newImageListCommand(o), newImageShowCommand(o), newSnapshotCommand(o), newRebuildCommand(o), newResizeCommand(o),
		newRescueCommand(o), newUnrescueCommand(o))
	root.AddCommand(newMigrateCommand(o), newMigrationListCommand(o), newEvacuateCommand(o), newHostEvacuateLiveCommand(o), newQuarantineListCommand(o))
	root.AddCommand(newServerGroupCreateCommand(o), newServerGroupListCommand(o), newServerGroupDeleteCommand(o))
	return root
}

// completeInstanceNames offers the names of the namespace's instances for a verb's NAME.
func (o *options) completeInstanceNames(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	// A shell waiting on an unreachable cluster is worse than no suggestions.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	names, err := o.instanceNames(ctx, toComplete)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
