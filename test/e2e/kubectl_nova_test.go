package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gbytes"
	"github.com/onsi/gomega/gexec"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/consolelog"
	"github.com/kubenova/kubenova/test/utils"
)

// kubectlNova runs the plugin binary against the cluster as the ordinary user (edit in the
// namespace) and returns its combined output.
func kubectlNova(ctx context.Context, args ...string) (string, error) {
	return runKubectlNova(ctx, tenantKubeconfig, args...)
}

// kubectlNovaAsCloudAdmin runs it as the cloud's administrator: evacuations and moves to a
// chosen node are theirs.
func kubectlNovaAsCloudAdmin(ctx context.Context, args ...string) (string, error) {
	return runKubectlNova(ctx, cloudAdminKubeconfig, args...)
}

func runKubectlNova(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(utils.BinDir(), "kubectl-nova"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	out, err := cmd.CombinedOutput()
	GinkgoWriter.Printf("$ kubectl nova %s\n%s", strings.Join(args, " "), out)
	return string(out), err
}

// startKubectlNova starts the plugin as the user of kubeconfig without waiting for it (a
// followed console log); the session ends with the spec.
func startKubectlNova(kubeconfig string, args ...string) *gexec.Session {
	cmd := exec.Command(filepath.Join(utils.BinDir(), "kubectl-nova"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	GinkgoWriter.Printf("$ kubectl nova %s &\n", strings.Join(args, " "))
	session, err := gexec.Start(cmd, GinkgoWriter, GinkgoWriter)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() { session.Kill() })
	return session
}

// novaWaitTimeout bounds each --wait, so that several fit in one spec's NodeTimeout.
const novaWaitTimeout = "--timeout=90s"

// expectRestsAfterWait checks, without waiting, that the instance rests in vmState with its spec
// asking for desired, and that its node's libvirt says the same of the domain: a --wait that
// exited 0 promises exactly that.
func expectRestsAfterWait(ctx context.Context, name string, vmState v1.VMState, desired v1.DesiredPowerState) *v1.Instance {
	GinkgoHelper()
	inst, err := instance(ctx, name)()
	Expect(err).NotTo(HaveOccurred())
	Expect(inst.Status.VMState).To(Equal(vmState))
	Expect(inst.Status.TaskState).To(BeEmpty())
	Expect(inst.Spec.PowerState).To(Equal(desired))
	Expect(inst.Status.ObservedGeneration).To(Equal(inst.Generation))
	Expect(meta.IsStatusConditionTrue(inst.Status.Conditions, v1.ConditionReady)).To(BeTrue())
	domstate := map[v1.VMState]string{v1.VMStateActive: "running", v1.VMStateStopped: "shut off", v1.VMStatePaused: "paused"}[vmState]
	Expect(domstate).NotTo(BeEmpty(), "no domain state known for %s", vmState)
	out, err := host(inst.Status.NodeName).Virsh(ctx, "domstate", inst.Status.AgentReport.DomainName)
	Expect(err).NotTo(HaveOccurred(), out)
	Expect(strings.TrimSpace(out)).To(Equal(domstate), "the hypervisor's word")
	return inst
}

var _ = Describe("kubectl nova", Ordered, func() {
	inNamespace("cli")
	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: cli", 1)
		path := writeManifest("cli.yaml", manifest)
		out, err := kubectl(ctx, "apply", "-f", path)
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
		out, err := kubectl(ctx, "delete", "instance", "cli", "--ignore-not-found", "--wait=true", "--timeout=60s")
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
		Expect(out).To(MatchRegexp(`(?m)^` + ns + `\s+cli\s+Active\s`))
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

	It("prints the guest's console log through the API server to those who may read it", func(ctx SpecContext) {
		By("reading the log of a stopped instance: it stays on the node")
		// The log ends with the guest's own power-off only if it hears the power button: a
		// guest early in its boot (the previous spec started it) does not yet.
		running, err := instance(ctx, "cli")()
		Expect(err).NotTo(HaveOccurred())
		expectConsole(ctx, running, func(c console) bool { return c.SinceLastBoot().Last(aliveSeq) >= 1 }, "the guest listening to its power button")
		out, err := kubectlNova(ctx, "stop", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		// The first call may come before kube-apiserver has found the aggregated API available.
		Eventually(func() error {
			out, err = kubectlNova(ctx, "console-log", "cli")
			return err
		}).WithContext(ctx).WithTimeout(30 * time.Second).WithPolling(time.Second).Should(Succeed())
		Expect(out).To(ContainSubstring("kubenova-test-guest: booted count=1"), "the whole log, from the first boot")
		Expect(out).To(MatchRegexp(`reboot: Power down\s*$`), "up to the power-off")
		boots := console(out).Last(bootCount)

		out, err = kubectlNova(ctx, "start", "cli", "--wait", novaWaitTimeout)
		Expect(err).NotTo(HaveOccurred(), out)
		inst, err := instance(ctx, "cli")()
		Expect(err).NotTo(HaveOccurred())
		expectConsole(ctx, inst, func(c console) bool {
			return c.Last(bootCount) > boots && c.SinceLastBoot().Last(aliveSeq) >= 1
		}, "booted again and counting")
		asked := time.Now()
		out, err = kubectlNova(ctx, "console-log", "cli", "--tail", "2")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("FIGURE kubectl nova console-log --tail 2, the plugin's whole run: %s\n", time.Since(asked).Round(time.Millisecond))
		tail := strings.Split(strings.TrimRight(out, "\r\n"), "\n")
		Expect(tail).To(HaveLen(2))
		Expect(tail[1]).To(MatchRegexp(`alive seq=\d+`), "the log's end")

		By("following: what the guest prints next arrives, and nothing older with --tail 0")
		follow := startKubectlNova(tenantKubeconfig, "console-log", "cli", "--tail", "0", "-f")
		Eventually(follow.Out).WithTimeout(15 * time.Second).Should(gbytes.Say(`alive seq=\d+`))
		Expect(string(follow.Out.Contents())).NotTo(ContainSubstring("booted"))
		follow.Interrupt()
		Eventually(follow).WithTimeout(10 * time.Second).Should(gexec.Exit())

		By("refusing, at the API server, those without get on instances/log")
		out, err = runKubectlNova(ctx, cluster.StrangerKubeconfig, "console-log", "cli", "-n", ns)
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(`cannot get resource "instances/log" in API group "subresources.compute.kubenova.io"`))
	}, NodeTimeout(2*time.Minute))

	It("has agents that serve console logs to the manager alone, with a token minted for their own node", func(ctx SpecContext) {
		inst, err := instance(ctx, "cli")()
		Expect(err).NotTo(HaveOccurred())
		node := inst.Status.NodeName
		other := ""
		for _, h := range cluster.Hosts {
			if h.Name != node {
				other = h.Name
			}
		}
		hv := &v1.Hypervisor{}
		Expect(cluster.Client.Get(ctx, client.ObjectKey{Name: node}, hv)).To(Succeed())
		Expect(hv.Status.ConsoleLogService).NotTo(BeNil())
		cs, err := kubernetes.NewForConfig(cluster.Config)
		Expect(err).NotTo(HaveOccurred())
		token := func(account, audience string) string {
			req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}}}
			resp, err := cs.CoreV1().ServiceAccounts(utils.SystemNamespace).CreateToken(ctx, account, req, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
			return resp.Status.Token
		}
		agents := &consolelog.AgentClient{}
		get := func(tok string) error {
			body, err := agents.Get(ctx, hv.Status.ConsoleLogService, tok, ns, "cli", consolelog.Options{TailLines: 1})
			if err == nil {
				_ = body.Close()
			}
			return err
		}
		Expect(get(token("kubenova-manager", consolelog.Audience(node)))).To(Succeed(), "the manager's token for this node")
		var refused *consolelog.AgentError
		Expect(errors.As(get(token("kubenova-manager", consolelog.Audience(other))), &refused)).To(BeTrue())
		Expect(refused.Code).To(Equal(http.StatusUnauthorized), "the manager's token for another node")
		_, err = cluster.MetricsScraperToken(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(errors.As(get(token(utils.MetricsScraper, consolelog.Audience(node))), &refused)).To(BeTrue())
		Expect(refused.Code).To(Equal(http.StatusForbidden), "another service account's token for this node")

		By("trusting only the certificate the Hypervisor publishes")
		forged := *hv.Status.ConsoleLogService
		forged.CertificateSHA256 = strings.Repeat("0", 64)
		_, err = agents.Get(ctx, &forged, token("kubenova-manager", consolelog.Audience(node)), ns, "cli", consolelog.Options{})
		Expect(err).To(MatchError(ContainSubstring("is not the one its Hypervisor publishes")))
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

	It("deletes the instance, which ends a followed console log", func(ctx SpecContext) {
		follow := startKubectlNova(tenantKubeconfig, "console-log", "cli", "--tail", "1", "-f")
		Eventually(follow.Out).WithTimeout(30 * time.Second).Should(gbytes.Say(`alive seq=\d+`))
		out, err := kubectl(ctx, "delete", "instance", "cli", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(follow).WithTimeout(30*time.Second).Should(gexec.Exit(0), "the log ends once the instance has left its node")
		out, err = kubectlNova(ctx, "show", "cli")
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("not found"))
	}, NodeTimeout(5*time.Minute))
})
