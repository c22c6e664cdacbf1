package novacli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/printers"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newServerGroupCreateCommand(o *options) *cobra.Command {
	var maxPerHost int32
	cmd := &cobra.Command{
		Use:   "server-group-create NAME POLICY [--max-server-per-host N]",
		Short: "Create a server group: its members go on one node, or on different ones (nova server-group-create)",
		Long: "server-group-create makes a ServerGroup with the policy affinity (every member on the node of\n" +
			"the first), anti-affinity (no two members on one node, or at most --max-server-per-host),\n" +
			"soft-affinity or soft-anti-affinity (the same, as a preference among the nodes that fit).\n" +
			"Instances join it at creation with spec.serverGroup: NAME. Its policy cannot change.",
		Example: `  # Keep the three replicas of a database on three different nodes
  kubectl nova server-group-create db anti-affinity

  # At most two members of web per node
  kubectl nova server-group-create web anti-affinity --max-server-per-host 2`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var limit *int32
			if cmd.Flags().Changed("max-server-per-host") {
				limit = &maxPerHost
			}
			return o.runServerGroupCreate(cmd.Context(), args[0], v1.ServerGroupPolicy(args[1]), limit)
		},
	}
	cmd.Flags().Int32Var(&maxPerHost, "max-server-per-host", 1, "anti-affinity only: how many members one node may hold (Nova's rule max_server_per_host).")
	return cmd
}

func (o *options) runServerGroupCreate(ctx context.Context, name string, policy v1.ServerGroupPolicy, maxPerHost *int32) error {
	c, key, err := o.instanceKey(name)
	if err != nil {
		return err
	}
	// The API server checks the policy and the rule too; saying it here names the choices.
	switch policy {
	case v1.ServerGroupAffinity, v1.ServerGroupAntiAffinity, v1.ServerGroupSoftAffinity, v1.ServerGroupSoftAntiAffinity:
	default:
		return fmt.Errorf("policy %q: want affinity, anti-affinity, soft-affinity or soft-anti-affinity", policy)
	}
	if maxPerHost != nil && policy != v1.ServerGroupAntiAffinity {
		return fmt.Errorf("--max-server-per-host is a rule of the anti-affinity policy only, not of %s", policy)
	}
	group := &v1.ServerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: name},
		Spec: v1.ServerGroupSpec{Policy: policy, MaxServerPerHost: maxPerHost}}
	if err := c.Create(ctx, group); err != nil {
		return err
	}
	_, err = fmt.Fprintf(o.streams.Out, "servergroup.compute.kubenova.io/%s created (%s)\n", name, describePolicy(group.Spec))
	return err
}

func newServerGroupListCommand(o *options) *cobra.Command {
	var allNamespaces bool
	cmd := &cobra.Command{
		Use:   "server-group-list",
		Short: "List server groups with their policy and members (nova server-group-list)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := o.listScope(allNamespaces)
			if err != nil {
				return err
			}
			var list v1.ServerGroupList
			if err := c.List(cmd.Context(), &list, opts...); err != nil {
				return err
			}
			return renderServerGroupTable(o.streams.Out, list.Items, allNamespaces, o.now())
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "List the server groups of every namespace.")
	return cmd
}

func newServerGroupDeleteCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "server-group-delete NAME",
		Short: "Delete a server group; its members stay where they are, no longer bound by it (nova server-group-delete)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, key, err := o.instanceKey(args[0])
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), &v1.ServerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}); err != nil {
				return err
			}
			_, err = fmt.Fprintf(o.streams.Out, "servergroup.compute.kubenova.io/%s deleted\n", key.Name)
			return err
		},
	}
}

// describePolicy says a group's policy with its rule, as nova server-group-list shows both.
func describePolicy(s v1.ServerGroupSpec) string {
	if s.Policy == v1.ServerGroupAntiAffinity {
		return string(s.Policy) + ", max_server_per_host=" + strconv.Itoa(s.MaxPerHost())
	}
	return string(s.Policy)
}

// renderServerGroupTable prints the groups by name: policy and rule, and the members with their
// nodes (from the group's status).
func renderServerGroupTable(out io.Writer, items []v1.ServerGroup, allNamespaces bool, now time.Time) error {
	sort.SliceStable(items, func(i, j int) bool {
		if items[i].Namespace != items[j].Namespace {
			return items[i].Namespace < items[j].Namespace
		}
		return items[i].Name < items[j].Name
	})
	w := printers.GetNewTabWriter(out)
	header := []string{"NAME", "POLICY", "MEMBERS", "AGE"}
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	_, _ = fmt.Fprintln(w, strings.Join(header, "\t"))
	for i := range items {
		g := &items[i]
		members := make([]string, 0, len(g.Status.Members))
		for _, m := range g.Status.Members {
			members = append(members, m.Name+"@"+orDash(m.NodeName))
		}
		row := []string{g.Name, describePolicy(g.Spec), orDash(strings.Join(members, ",")), age(g.CreationTimestamp.Time, now)}
		if allNamespaces {
			row = append([]string{g.Namespace}, row...)
		}
		_, _ = fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}
