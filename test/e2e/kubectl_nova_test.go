package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// kubectlNova runs the plugin binary against the cluster as the ordinary user (edit in the
// namespace) and returns its combined output.
func kubectlNova(ctx context.Context, args ...string) (string, error) {
	return runKubectlNova(ctx, cluster.Kubeconfig, args...)
}

// kubectlNovaAsCloudAdmin runs it as the cloud's administrator: evacuations and moves to a
// chosen node are theirs.
func kubectlNovaAsCloudAdmin(ctx context.Context, args ...string) (string, error) {
	return runKubectlNova(ctx, cluster.CloudAdminKubeconfig, args...)
}

func runKubectlNova(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(utils.BinDir(), "kubectl-nova"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	out, err := cmd.CombinedOutput()
	GinkgoWriter.Printf("$ kubectl nova %s\n%s", strings.Join(args, " "), out)
	return string(out), err
}

// novaWaitTimeout bounds each --wait, so that several fit in one spec's NodeTimeout.
const novaWaitTimeout = "--timeout=90s"

// expectRestsAfterWait checks, without waiting, that the instance rests in vmState with its spec
// asking for desired: a --wait that exited 0 promises exactly that.
func expectRestsAfterWait(ctx context.Context, name string, vmState v1.VMState, desired v1.DesiredPowerState) *v1.Instance {
	inst, err := instance(ctx, name)()
	Expect(err).NotTo(HaveOccurred())
	Expect(inst.Status.VMState).To(Equal(vmState))
	Expect(inst.Status.TaskState).To(BeEmpty())
	Expect(inst.Spec.PowerState).To(Equal(desired))
	Expect(inst.Status.ObservedGeneration).To(Equal(inst.Generation))
	Expect(meta.IsStatusConditionTrue(inst.Status.Conditions, v1.ConditionReady)).To(BeTrue())
	return inst
}

var _ = Describe("kubectl nova", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "flavors.yaml")
		applySample(ctx, "image.yaml")
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: cli", 1)
		path := filepath.Join(cluster.WorkDir, "cli.yaml")
		Expect(os.WriteFile(path, []byte(manifest), 0o644)).To(Succeed())
		out, err := cluster.Kubectl(ctx, "apply", "-f", path)
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(func(g Gomega) {
			inst, err := instance(ctx, "cli")()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(inst.Status.TaskState).To(BeEmpty())
			g.Expect(meta.IsStatusConditionTrue(inst.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).WithTimeout(90 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	}, NodeTimeout(5*time.Minute))

	// The last spec deletes the instance; this catches a run cut short, so that no instance
	// is left to skew the placement of the other specs.
	AfterAll(func(ctx SpecContext) {
		out, err := cluster.Kubectl(ctx, "delete", "instance", "cli", "-n", "default", "--ignore-not-found", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(2*time.Minute))

	It("lists the instance with nova list's columns", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "list")
		Expect(err).NotTo(HaveOccurred(), out)
		header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
		Expect(header).To(Equal([]string{"NAME", "STATUS", "TASK", "POWER", "NODE", "NETWORKS", "FLAVOR", "IMAGE", "LOCKED", "AGE"}))
		Expect(out).To(MatchRegexp(`(?m)^cli\s+Active\s+-\s+Running\s+host-\d\s+-\s+m1\.tiny\s+test-guest\s+false\s+\S+$`))

		// Every namespace is the cloud administrator's to list, not a member's.
		out, err = kubectlNova(ctx, "list", "-A")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("forbidden"))
		out, err = kubectlNovaAsCloudAdmin(ctx, "list", "-A")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(strings.Fields(strings.SplitN(out, "\n", 2)[0])[0]).To(Equal("NAMESPACE"))
		Expect(out).To(MatchRegexp(`(?m)^default\s+cli\s+Active\s`))
	}, NodeTimeout(5*time.Minute))

	It("shows the instance", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "show", "cli")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(MatchRegexp(`(?m)^vmState\s+Active$`))
		Expect(out).To(MatchRegexp(`(?m)^condition Ready\s+True \(DesiredStateReached\)`))
	}, NodeTimeout(5*time.Minute))

	It("stops and starts with --wait", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "stop", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("instance.compute.kubenova.io/cli stop requested"))
		Expect(out).To(ContainSubstring("cli: Stopped/-/"))
		expectRestsAfterWait(ctx, "cli", v1.VMStateStopped, v1.DesiredStopped)

		out, err = kubectlNova(ctx, "start", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		inst := expectRestsAfterWait(ctx, "cli", v1.VMStateActive, v1.DesiredRunning)
		Expect(inst.Status.PowerState).To(Equal(v1.PowerStateRunning))
	}, NodeTimeout(5*time.Minute))

	It("reboots with --wait once the reboot has succeeded", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "reboot", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		inst := expectRestsAfterWait(ctx, "cli", v1.VMStateActive, v1.DesiredRunning)
		Expect(inst.Spec.RebootRequest).NotTo(BeNil())
		Expect(inst.Status.RebootRequest).NotTo(BeNil())
		Expect(inst.Status.RebootRequest.RequestedAt.Equal(&inst.Spec.RebootRequest.RequestedAt)).To(BeTrue(),
			"the acknowledgement is of the request just written")
		Expect(inst.Status.RebootRequest.Result).To(Equal(v1.RequestSucceeded))
	}, NodeTimeout(5*time.Minute))

	It("pauses, refuses to resume a paused instance, and unpauses", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "pause", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		paused := expectRestsAfterWait(ctx, "cli", v1.VMStatePaused, v1.DesiredPaused)

		out, err = kubectlNova(ctx, "resume", "cli")
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("is Paused, not Suspended"))
		Expect(out).To(ContainSubstring("unpause"))
		inst, err := instance(ctx, "cli")()
		Expect(err).NotTo(HaveOccurred())
		Expect(inst.Generation).To(Equal(paused.Generation), "a refused verb writes nothing")

		out, err = kubectlNova(ctx, "unpause", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		expectRestsAfterWait(ctx, "cli", v1.VMStateActive, v1.DesiredRunning)
	}, NodeTimeout(5*time.Minute))

	It("fails --wait with the reason when the state machine refuses the transition", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "stop", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		expectRestsAfterWait(ctx, "cli", v1.VMStateStopped, v1.DesiredStopped)

		out, err = kubectlNova(ctx, "pause", "cli", "--wait", novaWaitTimeout)
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("InvalidState"))
		inst, err := instance(ctx, "cli")()
		Expect(err).NotTo(HaveOccurred())
		Expect(inst.Status.VMState).To(Equal(v1.VMStateStopped))
		Expect(meta.IsStatusConditionTrue(inst.Status.Conditions, v1.ConditionStalled)).To(BeTrue())

		out, err = kubectlNova(ctx, "start", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		expectRestsAfterWait(ctx, "cli", v1.VMStateActive, v1.DesiredRunning)
	}, NodeTimeout(5*time.Minute))

	It("tells what happened to the instance and when, oldest first, refusals included", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "instance-action-list", "cli")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("kubectl nova instance-action-list cli:\n%s", out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		Expect(strings.Fields(lines[0])).To(Equal([]string{"TIME", "ACTION", "REASON", "TYPE", "BY", "MESSAGE"}))
		rows := strings.Join(lines[1:], "\n")
		Expect(rows).To(MatchRegexp(`Launch\s+TaskSucceeded\s+Normal\s+kubenova-manager\s`))
		Expect(rows).To(MatchRegexp(`Pause\s+InvalidState\s+Warning\s`), "the refused pause of a stopped instance")
		Expect(rows).To(MatchRegexp(`Stop\s+TaskStarted\s`))
		Expect(rows).To(MatchRegexp(`Stop\s+TaskSucceeded\s`))
		Expect(strings.Index(rows, "Launch")).To(BeNumerically("<", strings.Index(rows, "InvalidState")), "oldest first")
	}, NodeTimeout(time.Minute))

	It("prints the instance as JSON with -o json", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "show", "cli", "-o", "json")
		Expect(err).NotTo(HaveOccurred(), out)
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		Expect(json.Unmarshal([]byte(out), &obj)).To(Succeed(), out)
		Expect(obj.Kind).To(Equal("Instance"))
		Expect(obj.Metadata.Name).To(Equal("cli"))
	}, NodeTimeout(5*time.Minute))

	It("deletes the instance", func(ctx SpecContext) {
		out, err := cluster.Kubectl(ctx, "delete", "instance", "cli", "-n", "default", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
		out, err = kubectlNova(ctx, "show", "cli")
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("not found"))
	}, NodeTimeout(5*time.Minute))
})
