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
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newListCommand(o *options) *cobra.Command {
	printFlags := genericclioptions.NewPrintFlags("").WithTypeSetter(o.scheme)
	var allNamespaces bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List instances with their vm, task and power states, as nova list does",
		Example: `  # List the instances of the current namespace
  kubectl nova list

  # List the instances of every namespace
  kubectl nova list -A

  # List the instances as YAML
  kubectl nova list -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.runList(cmd.Context(), printFlags, allNamespaces)
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "List the instances of every namespace.")
	printFlags.AddFlags(cmd)
	return cmd
}

func (o *options) runList(ctx context.Context, printFlags *genericclioptions.PrintFlags, allNamespaces bool) error {
	c, err := o.newClient()
	if err != nil {
		return err
	}
	var opts []client.ListOption
	ns := ""
	if !allNamespaces {
		if ns, err = o.namespace(); err != nil {
			return err
		}
		opts = append(opts, client.InNamespace(ns))
	}
	list := &v1.InstanceList{}
	if err := c.List(ctx, list, opts...); err != nil {
		return err
	}
	sortInstances(list.Items)

	if !humanOutput(printFlags) {
		printer, err := printFlags.ToPrinter()
		if err != nil {
			return err
		}
		u, err := toUnstructuredList(list)
		if err != nil {
			return err
		}
		return printer.PrintObj(u, o.streams.Out)
	}
	if len(list.Items) == 0 {
		if allNamespaces {
			_, _ = fmt.Fprintln(o.streams.ErrOut, "No resources found")
		} else {
			_, _ = fmt.Fprintf(o.streams.ErrOut, "No resources found in %s namespace.\n", ns)
		}
		return nil
	}
	return renderTable(o.streams.Out, list.Items, allNamespaces, o.now())
}

// toUnstructuredList types the list and each item: the name printer takes no typed list, and
// readers of -o json expect every item to say what it is, as kubectl get prints them.
func toUnstructuredList(list *v1.InstanceList) (*unstructured.UnstructuredList, error) {
	list = list.DeepCopy()
	list.SetGroupVersionKind(v1.GroupVersion.WithKind("InstanceList"))
	for i := range list.Items {
		list.Items[i].SetGroupVersionKind(v1.GroupVersion.WithKind("Instance"))
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(list)
	if err != nil {
		return nil, err
	}
	u := &unstructured.UnstructuredList{}
	u.SetUnstructuredContent(content)
	return u, nil
}

// humanOutput says whether neither -o nor --template asked for a machine format.
func humanOutput(f *genericclioptions.PrintFlags) bool {
	noOutput := f.OutputFormat == nil || *f.OutputFormat == ""
	t := f.TemplatePrinterFlags
	noTemplate := t == nil || t.TemplateArgument == nil || *t.TemplateArgument == ""
	return noOutput && noTemplate
}

// sortInstances orders by namespace, then name, so that -A groups each namespace together.
func sortInstances(items []v1.Instance) {
	sort.Slice(items, func(i, j int) bool {
		if items[i].Namespace != items[j].Namespace {
			return items[i].Namespace < items[j].Namespace
		}
		return items[i].Name < items[j].Name
	})
}

// renderTable writes the nova list table; now fixes the AGE column.
func renderTable(out io.Writer, items []v1.Instance, allNamespaces bool, now time.Time) error {
	w := printers.GetNewTabWriter(out)
	header := []string{"NAME", "STATUS", "TASK", "POWER", "NODE", "NETWORKS", "FLAVOR", "IMAGE", "LOCKED", "AGE"}
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	_, _ = fmt.Fprintln(w, strings.Join(header, "\t"))
	for i := range items {
		inst := &items[i]
		row := []string{
			inst.Name,
			orDash(string(inst.Status.VMState)),
			orDash(string(inst.Status.TaskState)),
			orDash(string(inst.Status.PowerState)),
			orDash(inst.Status.NodeName),
			orDash(inst.Status.Addresses),
			had(appliedFlavor(inst), inst.Spec.Flavor),
			had(appliedImage(inst), inst.Spec.Image.Name),
			strconv.FormatBool(inst.Spec.Locked),
			age(inst.CreationTimestamp.Time, now),
		}
		if allNamespaces {
			row = append([]string{inst.Namespace}, row...)
		}
		_, _ = fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}

// had shows what an instance has, and what its spec asks for when that differs ("m1.tiny→m1.small"
// while a resize is in flight); the spec alone before the instance has anything.
func had(applied, asked string) string {
	switch {
	case applied == "":
		return orDash(asked)
	case asked == "" || asked == applied:
		return applied
	}
	return applied + "→" + asked
}

func appliedFlavor(inst *v1.Instance) string {
	if inst.Status.Flavor == nil {
		return ""
	}
	return inst.Status.Flavor.Name
}

func appliedImage(inst *v1.Instance) string {
	if inst.Status.Image == nil {
		return ""
	}
	return inst.Status.Image.Name
}

// orDash shows an empty value as "-", as nova list does, so that columns stay aligned.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// age is kubectl's AGE: a short duration since created, or <unknown> without a timestamp.
func age(created, now time.Time) string {
	if created.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(created))
}

// instanceNames lists the names in the current namespace that start with prefix.
func (o *options) instanceNames(ctx context.Context, prefix string) ([]string, error) {
	c, err := o.newClient()
	if err != nil {
		return nil, err
	}
	ns, err := o.namespace()
	if err != nil {
		return nil, err
	}
	list := &v1.InstanceList{}
	if err := c.List(ctx, list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var names []string
	for _, inst := range list.Items {
		if strings.HasPrefix(inst.Name, prefix) {
			names = append(names, inst.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}
