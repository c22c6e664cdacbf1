package novacli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newImageListCommand(o *options) *cobra.Command {
	printFlags := genericclioptions.NewPrintFlags("").WithTypeSetter(o.scheme)
	var (
		allNamespaces bool
		wf            waitFlags
	)
	cmd := &cobra.Command{
		Use:   "image-list",
		Short: "List the images instances can boot from: the namespace's Images and the shared ClusterImages",
		Long: "image-list lists the Images of the namespace and the ClusterImages every namespace\n" +
			"shares (Glance's public images), with their status, format and sizes.",
		Example: `  # List the images of the current namespace and the shared ones
  kubectl nova image-list

  # List the images of every namespace
  kubectl nova image-list -A

  # Wait until no image is still importing, then list them
  kubectl nova image-list --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.runImageList(cmd.Context(), printFlags, allNamespaces, wf)
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "List the Images of every namespace.")
	wf.addWithUsage(cmd, "Wait until no listed image is Pending or Importing.", 5*time.Minute)
	printFlags.AddFlags(cmd)
	return cmd
}

func (o *options) runImageList(ctx context.Context, printFlags *genericclioptions.PrintFlags, allNamespaces bool, wf waitFlags) error {
	c, opts, err := o.listScope(allNamespaces)
	if err != nil {
		return err
	}
	items, err := listImages(ctx, c, opts)
	if wf.wait {
		waitCtx, cancel := context.WithTimeout(ctx, wf.timeout)
		defer cancel()
		ticker := time.NewTicker(o.pollInterval)
		defer ticker.Stop()
		for err == nil && importing(items) != "" {
			select {
			case <-waitCtx.Done():
				return fmt.Errorf("timed out after %s waiting for image %s to be imported", wf.timeout, importing(items))
			case <-ticker.C:
			}
			items, err = listImages(waitCtx, c, opts)
		}
	}
	if err != nil {
		return err
	}
	if !humanOutput(printFlags) {
		printer, err := printFlags.ToPrinter()
		if err != nil {
			return err
		}
		list, err := imagesAsList(items)
		if err != nil {
			return err
		}
		return printer.PrintObj(list, o.streams.Out)
	}
	if len(items) == 0 {
		_, _ = fmt.Fprintln(o.streams.ErrOut, "No images found")
		return nil
	}
	return renderImageTable(o.streams.Out, items, allNamespaces, o.now())
}

// listImages lists the Images (with opts) and the ClusterImages, by namespace then name.
func listImages(ctx context.Context, c client.Client, opts []client.ListOption) ([]v1.ImageObject, error) {
	var images v1.ImageList
	if err := c.List(ctx, &images, opts...); err != nil {
		return nil, err
	}
	var shared v1.ClusterImageList
	if err := c.List(ctx, &shared); err != nil {
		return nil, err
	}
	items := make([]v1.ImageObject, 0, len(images.Items)+len(shared.Items))
	for i := range shared.Items {
		items = append(items, &shared.Items[i])
	}
	for i := range images.Items {
		items = append(items, &images.Items[i])
	}
	sort.SliceStable(items, func(i, j int) bool {
		if items[i].GetNamespace() != items[j].GetNamespace() {
			return items[i].GetNamespace() < items[j].GetNamespace()
		}
		return items[i].GetName() < items[j].GetName()
	})
	return items, nil
}

// importing names an image that is still on its way (Pending or Importing), or "".
func importing(items []v1.ImageObject) string {
	for _, img := range items {
		switch img.ImageStatus().Phase {
		case "", v1.ImagePending, v1.ImageImporting:
			return img.GetName()
		}
	}
	return ""
}

// imagesAsList puts Images and ClusterImages into one List, as kubectl get prints several kinds.
func imagesAsList(items []v1.ImageObject) (*unstructured.UnstructuredList, error) {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(schema.GroupVersionKind{Version: "v1", Kind: "List"})
	for _, item := range items {
		item = item.DeepCopyObject().(v1.ImageObject)
		item.GetObjectKind().SetGroupVersionKind(v1.GroupVersion.WithKind(string(imageKind(item))))
		content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(item)
		if err != nil {
			return nil, err
		}
		list.Items = append(list.Items, unstructured.Unstructured{Object: content})
	}
	return list, nil
}

// renderImageTable writes the image-list table; now fixes the AGE column.
func renderImageTable(out io.Writer, items []v1.ImageObject, allNamespaces bool, now time.Time) error {
	w := printers.GetNewTabWriter(out)
	header := []string{"NAME", "VISIBILITY", "STATUS", "FORMAT", "SIZE", "VIRTUAL SIZE", "AGE"}
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	_, _ = fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, img := range items {
		st := img.ImageStatus()
		row := []string{
			img.GetName(),
			visibility(img),
			orDash(string(st.Phase)),
			string(diskFormat(img.ImageSpec())),
			bytesValue(st.SizeBytes),
			bytesValue(st.VirtualSizeBytes),
			age(img.GetCreationTimestamp().Time, now),
		}
		if allNamespaces {
			row = append([]string{orDash(img.GetNamespace())}, row...)
		}
		_, _ = fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}

func newImageShowCommand(o *options) *cobra.Command {
	printFlags := genericclioptions.NewPrintFlags("").WithTypeSetter(o.scheme)
	var (
		cluster bool
		wf      waitFlags
	)
	cmd := &cobra.Command{
		Use:   "image-show NAME",
		Short: "Show an image's status, sizes, digest and source",
		Long: "image-show shows an Image of the namespace or, with --cluster, a ClusterImage. With --wait\n" +
			"it first waits until the image service has imported it, and fails if the import failed.",
		Example: `  # Show an image of the current namespace
  kubectl nova image-show cirros

  # Wait until a shared image is available, then show it
  kubectl nova image-show ubuntu-24.04 --cluster --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runImageShow(cmd.Context(), printFlags, args[0], cluster, wf)
		},
	}
	cmd.Flags().BoolVar(&cluster, "cluster", false, "Show the ClusterImage NAME instead of the namespace's Image.")
	wf.addWithUsage(cmd, "Wait until the image is Available; fail if its import fails.", 5*time.Minute)
	printFlags.AddFlags(cmd)
	return cmd
}

func (o *options) runImageShow(ctx context.Context, printFlags *genericclioptions.PrintFlags, name string, cluster bool, wf waitFlags) error {
	c, err := o.newClient()
	if err != nil {
		return err
	}
	var img v1.ImageObject = &v1.ClusterImage{}
	key := client.ObjectKey{Name: name}
	if !cluster {
		ns, err := o.namespace()
		if err != nil {
			return err
		}
		img, key = &v1.Image{}, client.ObjectKey{Namespace: ns, Name: name}
	}
	get := func(ctx context.Context) error { return c.Get(ctx, key, img) }
	if wf.wait {
		err = waitForImage(ctx, o.streams.ErrOut, img, get, o.pollInterval, wf.timeout)
	} else {
		err = get(ctx)
	}
	if err != nil {
		return err
	}
	if !humanOutput(printFlags) {
		printer, err := printFlags.ToPrinter()
		if err != nil {
			return err
		}
		return printer.PrintObj(img, o.streams.Out)
	}
	w := printers.GetNewTabWriter(o.streams.Out)
	_, _ = fmt.Fprintln(w, "PROPERTY\tVALUE")
	for _, p := range imageProperties(img) {
		_, _ = fmt.Fprintf(w, "%s\t%s\n", p.name, p.value)
	}
	return w.Flush()
}

// waitForImage reads the image (get fills img) every interval until it is Available (nil),
// failed its import (the error says why), or timeout passes, printing each new phase to out.
func waitForImage(ctx context.Context, out io.Writer, img v1.ImageObject, get func(context.Context) error, interval, timeout time.Duration) error {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var (
		phase   v1.ImagePhase
		lastErr error
	)
	for {
		err := get(waitCtx)
		switch {
		case apierrors.IsNotFound(err):
			return err
		case err != nil:
			// An API server that restarts must not fail a wait; the timeout says the rest.
			if waitCtx.Err() == nil {
				lastErr = err
			}
		default:
			lastErr = nil
			st := img.ImageStatus()
			if st.Phase != phase {
				phase = st.Phase
				_, _ = fmt.Fprintf(out, "%s: %s\n", img.GetName(), orDash(string(phase)))
			}
			switch phase {
			case v1.ImageAvailable:
				return nil
			case v1.ImageError:
				if c := meta.FindStatusCondition(st.Conditions, v1.ConditionReady); c != nil {
					return fmt.Errorf("%s: %s", c.Reason, c.Message)
				}
				return fmt.Errorf("image %s failed its import", img.GetName())
			}
		}
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			msg := fmt.Sprintf("timed out after %s waiting for image %s to be Available", timeout, img.GetName())
			if lastErr != nil {
				msg += ": " + lastErr.Error()
			} else if phase != "" {
				msg += " (it is " + string(phase) + ")"
			}
			return fmt.Errorf("%s", msg)
		case <-ticker.C:
		}
	}
}

// imageProperties lists the rows of image-show.
func imageProperties(img v1.ImageObject) []property {
	spec, st := img.ImageSpec(), img.ImageStatus()
	props := []property{
		{"name", img.GetName()},
		{"kind", string(imageKind(img))},
		{"visibility", visibility(img)},
		{"namespace", orDash(img.GetNamespace())},
		{"uid", orDash(string(img.GetUID()))},
		{"created", formatTime(img.GetCreationTimestamp().Time)},
		{"status", orDash(string(st.Phase))},
		{"diskFormat", string(diskFormat(spec))},
		{"size", bytesValue(st.SizeBytes)},
		{"virtualSize", bytesValue(st.VirtualSizeBytes)},
		{"sha256", spec.SHA256},
		{"source", describeImageSource(spec.Source)},
		{"location", orDash(st.Location)},
	}
	if spec.MinDiskGiB > 0 {
		props = append(props, property{"minDisk", fmt.Sprintf("%d GiB", spec.MinDiskGiB)})
	}
	if spec.MinMemoryMiB > 0 {
		props = append(props, property{"minMemory", fmt.Sprintf("%d MiB", spec.MinMemoryMiB)})
	}
	if st.ImportedAt != nil {
		props = append(props, property{"importedAt", formatTime(st.ImportedAt.Time)})
	}
	for _, c := range st.Conditions {
		value := fmt.Sprintf("%s (%s)", c.Status, c.Reason)
		if c.Message != "" {
			value += " " + c.Message
		}
		props = append(props, property{"condition " + c.Type, value})
	}
	return props
}

func imageKind(img v1.ImageObject) v1.ImageKind {
	if _, ok := img.(*v1.ClusterImage); ok {
		return v1.KindClusterImage
	}
	return v1.KindImage
}

// visibility is Glance's word for who may boot an image: public (a ClusterImage) or the
// namespace's own (an Image).
func visibility(img v1.ImageObject) string {
	if imageKind(img) == v1.KindClusterImage {
		return "public"
	}
	return "namespace"
}

func diskFormat(spec *v1.ImageSpec) v1.DiskFormat {
	if spec.DiskFormat == "" {
		return v1.DiskFormatQCOW2
	}
	return spec.DiskFormat
}

func describeImageSource(s v1.ImageSource) string {
	if s.URL != "" {
		return "url " + s.URL
	}
	return "file " + s.File
}

// bytesValue shows a size in binary units, as qemu-img does; "-" before it is known.
func bytesValue(n int64) string {
	if n <= 0 {
		return "-"
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
