package novacli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// waitFlags are --wait and --timeout, shared by every verb that writes.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

func (f *waitFlags) addTo(cmd *cobra.Command) {
	f.addWithUsage(cmd, "Follow the instance until the manager has carried out the change; fail if it refuses or the instance goes to Error.",
		5*time.Minute)
}

// addWithUsage adds --wait, saying what it waits for, and --timeout with its default.
func (f *waitFlags) addWithUsage(cmd *cobra.Command, usage string, timeout time.Duration) {
	cmd.Flags().BoolVar(&f.wait, "wait", false, usage)
	cmd.Flags().DurationVar(&f.timeout, "timeout", timeout, "How long --wait waits before it fails.")
}

// request is one write of a verb.
type request struct {
	name string
	verb string
	body []byte
	// stamped is the one-shot request the body carries, for --wait to follow.
	stamped *stampedRequest
	// precheck refuses the write after reading the instance; nil writes without reading, and
	// leaves the judgement to the manager's state machine.
	precheck func(*v1.Instance) error
	// bodyFor, when set, makes the body from the instance as it is (a revert names the old
	// flavor).
	bodyFor func(*v1.Instance) ([]byte, error)
	// untilResized: --wait is done once the instance waits in Resized.
	untilResized bool
}

// listScope returns a client and the options that list the chosen namespace, or every
// namespace (-A).
func (o *options) listScope(allNamespaces bool) (client.Client, []client.ListOption, error) {
	c, err := o.newClient()
	if err != nil || allNamespaces {
		return c, nil, err
	}
	ns, err := o.namespace()
	if err != nil {
		return nil, nil, err
	}
	return c, []client.ListOption{client.InNamespace(ns)}, nil
}

// instanceKey returns a client and the key of the instance name in the chosen namespace.
func (o *options) instanceKey(name string) (client.Client, client.ObjectKey, error) {
	c, err := o.newClient()
	if err != nil {
		return nil, client.ObjectKey{}, err
	}
	ns, err := o.namespace()
	if err != nil {
		return nil, client.ObjectKey{}, err
	}
	return c, client.ObjectKey{Namespace: ns, Name: name}, nil
}

// write patches the instance's spec and, with --wait, follows it until the manager is done.
func (o *options) write(ctx context.Context, req request, wf waitFlags) error {
	c, key, err := o.instanceKey(req.name)
	if err != nil {
		return err
	}
	if req.precheck != nil || req.bodyFor != nil {
		current := &v1.Instance{}
		if err := c.Get(ctx, key, current); err != nil {
			return err
		}
		if req.precheck != nil {
			if err := req.precheck(current); err != nil {
				return err
			}
		}
		if req.bodyFor != nil {
			if req.body, err = req.bodyFor(current); err != nil {
				return err
			}
		}
	}
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if err := c.Patch(ctx, inst, client.RawPatch(types.MergePatchType, req.body)); err != nil {
		return err
	}
	out := o.streams.Out
	_, _ = fmt.Fprintf(out, "%s%s %s requested\n", resourceRef, req.name, req.verb)
	if !wf.wait {
		return nil
	}
	get := func(ctx context.Context) (*v1.Instance, error) {
		got := &v1.Instance{}
		return got, c.Get(ctx, key, got)
	}
	target := waitTarget{generation: inst.Generation, request: req.stamped, untilResized: req.untilResized}
	final, err := waitFor(ctx, out, req.name, get, target, o.pollInterval, wf.timeout)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(out, "%s%s %s done: %s\n", resourceRef, req.name, req.verb, final.Status.VMState)
	return nil
}

// verbExample is the Example of a verb that takes an instance name.
func verbExample(verb, what string, flags ...string) string {
	ex := fmt.Sprintf("  # %s web\n  kubectl nova %s web\n\n", what, verb)
	ex += fmt.Sprintf("  # %s web and wait until the manager is done\n  kubectl nova %s web --wait", what, verb)
	for _, f := range flags {
		ex += "\n\n" + f
	}
	return ex
}
