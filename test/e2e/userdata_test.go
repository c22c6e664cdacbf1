package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("User data", Ordered, func() {
	inNamespace("userdata")

	It("gives the guest its user data from a Secret and its SSH keys on a cloud-init NoCloud drive", func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		Expect(client.IgnoreAlreadyExists(cluster.Client.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-userdata"},
			StringData: map[string]string{"userdata": "#cloud-config\nruncmd:\n- echo hello from user data\n"}}))).To(Succeed())
		key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKubenovaTestKeyNotARealOne0000000000000000 ops@example: #1"
		inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cloudy"},
			Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"},
				UserData:          &v1.UserDataSource{SecretName: "web-userdata"},
				SSHAuthorizedKeys: []string{key}}}
		Expect(cluster.Client.Create(ctx, inst)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) {
			out, err := kubectl(ctx, "delete", "instance", "cloudy", "--wait=true", "--timeout=90s")
			Expect(err).NotTo(HaveOccurred(), out)
		}, NodeTimeout(2*time.Minute))
		inst = expectInstance(ctx, "cloudy", settled(v1.VMStateActive))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 1 }, "first boot")
		got := string(readConsole(inst))
		for _, want := range []string{
			`cidata instance-id: "` + string(inst.UID) + `"`,
			`cidata ssh-key="` + key + `"`,
			"cidata user-data: #cloud-config",
			"cidata user-data: - echo hello from user data",
		} {
			Expect(got).To(ContainSubstring(want))
		}
		Expect(strings.Count(got, "cidata ssh-key=")).To(Equal(1))

		// The user data stays in its Secret: no log, Event or status carries it.
		secret := "echo hello from user data"
		logs, err := filepath.Glob(filepath.Join(cluster.WorkDir, "logs", "*.log"))
		Expect(err).NotTo(HaveOccurred())
		Expect(logs).NotTo(BeEmpty())
		for _, l := range logs {
			b, err := os.ReadFile(l)
			Expect(err).NotTo(HaveOccurred())
			Expect(string(b)).NotTo(ContainSubstring(secret), l)
		}
		var evs eventsv1.EventList
		Expect(cluster.Client.List(ctx, &evs, client.InNamespace(ns))).To(Succeed())
		evJSON, err := json.Marshal(evs)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(evJSON)).To(ContainSubstring("cloudy"), "the instance's Events are there to be read")
		Expect(string(evJSON)).NotTo(ContainSubstring(secret))
		statusJSON, err := json.Marshal(inst.Status)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(statusJSON)).NotTo(ContainSubstring(secret))
	}, NodeTimeout(3*time.Minute))
})
