package novacli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

const guestSum = "4e1243bd22c66e76c2ba9eddc1f91394e57f9f834e1243bd22c66e76c2ba9edd"

// sampleImages are an Available Image in default, one that failed in prod, and a ClusterImage.
func sampleImages() (*v1.Image, *v1.Image, *v1.ClusterImage) {
	created := metav1.NewTime(testNow.Add(-2 * time.Hour))
	available := v1.ImageStatus{Phase: v1.ImageAvailable, SizeBytes: 15990784, VirtualSizeBytes: 48 << 20, Format: "qcow2",
		SHA256: guestSum, Location: "1f1c-uid",
		Conditions: []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1.ReasonAvailable,
			Message: "15990784 bytes of qcow2, sha256 verified; instances can boot from it"}}}
	guest := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "test-guest", UID: "1f1c-uid", CreationTimestamp: created},
		Spec:   v1.ImageSpec{Source: v1.ImageSource{File: "/images/guest.qcow2"}, SHA256: guestSum, DiskFormat: v1.DiskFormatQCOW2},
		Status: available}
	broken := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "broken", CreationTimestamp: created},
		Spec: v1.ImageSpec{Source: v1.ImageSource{URL: "http://images.example/broken.qcow2"}, SHA256: guestSum},
		Status: v1.ImageStatus{Phase: v1.ImageError, Conditions: []metav1.Condition{{Type: v1.ConditionReady,
			Status: metav1.ConditionFalse, Reason: "ChecksumMismatch", Message: "the image at http://images.example/broken.qcow2 has sha256 0a1b"}}}}
	shared := &v1.ClusterImage{ObjectMeta: metav1.ObjectMeta{Name: "debian-12", UID: "2f1c-uid", CreationTimestamp: created},
		Spec:   v1.ImageSpec{Source: v1.ImageSource{URL: "https://cloud.debian.org/debian-12.qcow2"}, SHA256: guestSum, MinDiskGiB: 2},
		Status: available}
	return guest, broken, shared
}

func TestImageListShowsTheNamespacesImagesAndTheSharedOnes(t *testing.T) {
	guest, broken, shared := sampleImages()
	h := newHarness(t, guest, broken, shared)
	if err := h.run("image-list"); err != nil {
		t.Fatal(err)
	}
	assertRows(t, h.out.String(), [][]string{
		{"NAME", "VISIBILITY", "STATUS", "FORMAT", "SIZE", "VIRTUAL", "SIZE", "AGE"},
		{"debian-12", "public", "Available", "qcow2", "15.2", "MiB", "48.0", "MiB", "120m"},
		{"test-guest", "namespace", "Available", "qcow2", "15.2", "MiB", "48.0", "MiB", "120m"},
	})

	h = newHarness(t, guest, broken, shared)
	if err := h.run("image-list", "-A"); err != nil {
		t.Fatal(err)
	}
	assertRows(t, h.out.String(), [][]string{
		{"NAMESPACE", "NAME", "VISIBILITY", "STATUS", "FORMAT", "SIZE", "VIRTUAL", "SIZE", "AGE"},
		{"-", "debian-12", "public", "Available", "qcow2", "15.2", "MiB", "48.0", "MiB", "120m"},
		{"default", "test-guest", "namespace", "Available", "qcow2", "15.2", "MiB", "48.0", "MiB", "120m"},
		{"prod", "broken", "namespace", "Error", "qcow2", "-", "-", "120m"},
	})

	h = newHarness(t, guest, broken, shared)
	if err := h.run("image-list", "-o", "json"); err != nil {
		t.Fatal(err)
	}
	var list struct {
		Kind  string `json:"kind"`
		Items []struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(h.out.Bytes(), &list); err != nil {
		t.Fatalf("%v: %s", err, h.out)
	}
	if list.Kind != "List" || len(list.Items) != 2 || list.Items[0].Kind != "ClusterImage" || list.Items[1].Kind != "Image" ||
		list.Items[1].Metadata.Name != "test-guest" {
		t.Fatalf("-o json gave %+v", list)
	}
}

func TestImageShow(t *testing.T) {
	guest, broken, shared := sampleImages()
	h := newHarness(t, guest, broken, shared)
	if err := h.run("image-show", "debian-12", "--cluster"); err != nil {
		t.Fatal(err)
	}
	out := h.out.String()
	for _, want := range [][2]string{{"kind", "ClusterImage"}, {"visibility", "public"}, {"namespace", "-"}, {"status", "Available"},
		{"sha256", guestSum}, {"source", "url https://cloud.debian.org/debian-12.qcow2"}, {"minDisk", "2 GiB"},
		{"virtualSize", "48.0 MiB"}} {
		if !hasProperty(out, want[0], want[1]) {
			t.Errorf("image-show lacks %s %q:\n%s", want[0], want[1], out)
		}
	}
	if err := h.run("image-show", "debian-12"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("without --cluster, a ClusterImage is not the namespace's Image: %v", err)
	}
}

func TestImageShowWaitFailsWithTheImportError(t *testing.T) {
	guest, broken, shared := sampleImages()
	h := newHarness(t, guest, broken, shared)
	h.opts.namespace = func() (string, error) { return "prod", nil }
	err := h.run("image-show", "broken", "--wait")
	if err == nil || err.Error() != "ChecksumMismatch: the image at http://images.example/broken.qcow2 has sha256 0a1b" {
		t.Fatalf("--wait on a failed image: %v", err)
	}
	h = newHarness(t, guest)
	if err := h.run("image-show", "test-guest", "--wait"); err != nil || !hasProperty(h.out.String(), "status", "Available") {
		t.Fatalf("--wait on an available image: %v\n%s", err, h.out)
	}
}

// TestWaitForImageFollowsThePhases: --wait prints each phase once and returns when the image is
// Available; it gives up at the timeout, saying where the image is.
func TestWaitForImageFollowsThePhases(t *testing.T) {
	phases := []v1.ImagePhase{"", v1.ImagePending, v1.ImageImporting, v1.ImageImporting, v1.ImageAvailable}
	img := &v1.Image{ObjectMeta: metav1.ObjectMeta{Name: "img"}}
	reads := 0
	get := func(context.Context) error {
		img.Status.Phase = phases[min(reads, len(phases)-1)]
		reads++
		return nil
	}
	var out bytes.Buffer
	if err := waitForImage(context.Background(), &out, img, get, time.Millisecond, time.Minute); err != nil {
		t.Fatal(err)
	}
	if out.String() != "img: Pending\nimg: Importing\nimg: Available\n" {
		t.Errorf("printed %q", out.String())
	}
	stuck := func(context.Context) error { img.Status.Phase = v1.ImageImporting; return nil }
	err := waitForImage(context.Background(), &out, img, stuck, time.Millisecond, 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "timed out after 20ms waiting for image img to be Available (it is Importing)") {
		t.Fatalf("a stuck import: %v", err)
	}
}

// hasProperty says whether a PROPERTY/VALUE table has the row name value.
func hasProperty(out, name, value string) bool {
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok && strings.TrimSpace(rest) == value {
			return true
		}
	}
	return false
}

func TestImageListWaitGivesUpOnAnImportThatDoesNotEnd(t *testing.T) {
	guest, _, _ := sampleImages()
	pending := guest.DeepCopy()
	pending.Name, pending.Status = "fresh", v1.ImageStatus{Phase: v1.ImageImporting}
	h := newHarness(t, guest, pending)
	err := h.run("image-list", "--wait", "--timeout", "30ms")
	if err == nil || err.Error() != "timed out after 30ms waiting for image fresh to be imported" {
		t.Fatalf("--wait with an image importing: %v", err)
	}
	h = newHarness(t, guest)
	if err := h.run("image-list", "--wait"); err != nil || !strings.Contains(h.out.String(), "test-guest") {
		t.Fatalf("--wait with every image settled: %v\n%s", err, h.out)
	}
}
