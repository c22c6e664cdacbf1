package deployed

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// What the kubelet and containerd made of the manifests' security contexts, read from the
// running processes: the agent runs as root with DAC_OVERRIDE and FOWNER only, the manager as
// 65532 with no capability; neither can gain privileges, both run under the runtime's seccomp
// filter. The operations the other tests carry out (snapshots, shelves, moves, rescues) prove
// these privileges enough. Each also holds the kubelet's token: bound to its pod and node, so
// that it dies with the pod, and rotated by the kubelet.
func TestThePodsRunWithOnlyTheirDeclaredPrivileges(t *testing.T) {
	ctx := context.Background()
	const (
		capDACOverride = 1 << 1
		capFOwner      = 1 << 3
	)
	type want struct {
		uid  string
		caps uint64
	}
	pods := agentPods(ctx, t)
	if len(pods) != nodes {
		t.Fatalf("%d agent pods, want %d", len(pods), nodes)
	}
	checks := map[string]want{}
	all := append([]corev1.Pod{managerPod(ctx, t)}, pods...)
	for _, p := range pods {
		checks[p.Name] = want{uid: "0", caps: capDACOverride | capFOwner}
	}
	checks[all[0].Name] = want{uid: "65532", caps: 0}
	for _, p := range all {
		w := checks[p.Name]
		for _, pid := range containerPIDs(t, p) {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				t.Fatal(err)
			}
			fields := statusFields(string(status))
			if uid := strings.Fields(fields["Uid"]); len(uid) == 0 || uid[0] != w.uid {
				t.Errorf("%s (pid %d): uid %q, want %s", p.Name, pid, fields["Uid"], w.uid)
			}
			for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
				var got uint64
				if _, err := fmt.Sscanf(fields[set], "%x", &got); err != nil || got != w.caps {
					t.Errorf("%s (pid %d): %s %s, want %#x", p.Name, pid, set, fields[set], w.caps)
				}
			}
			if fields["NoNewPrivs"] != "1" {
				t.Errorf("%s (pid %d): NoNewPrivs %q: it may gain privileges", p.Name, pid, fields["NoNewPrivs"])
			}
			if fields["Seccomp"] != "2" {
				t.Errorf("%s (pid %d): Seccomp %q, want 2 (a filter: RuntimeDefault)", p.Name, pid, fields["Seccomp"])
			}
			checkBoundToken(t, p, pid)
		}
	}
}

// statusFields are /proc/PID/status's "Name:\tvalue" lines.
func statusFields(status string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// checkBoundToken reads the service account token the process sees and checks that it is the
// kubelet's projected one: bound to this pod and its node, with an expiry and the time the kubelet
// rotates it.
func checkBoundToken(t *testing.T, pod corev1.Pod, pid int) {
	t.Helper()
	// The kubelet mounts it at /var/run/secrets/...; in the images /var/run is a symbolic link to
	// /run, which must be followed inside the container's root, not this machine's.
	root := fmt.Sprintf("/proc/%d/root", pid)
	var token []byte
	var err error
	for _, dir := range []string{"var/run", "run"} {
		if token, err = os.ReadFile(filepath.Join(root, dir, "secrets/kubernetes.io/serviceaccount/token")); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("%s: its token: %v", pod.Name, err)
		return
	}
	parts := strings.Split(strings.TrimSpace(string(token)), ".")
	if len(parts) != 3 {
		t.Errorf("%s: the token is no JWT", pod.Name)
		return
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Errorf("%s: the token's claims: %v", pod.Name, err)
		return
	}
	var claims struct {
		Exp        int64 `json:"exp"`
		Kubernetes struct {
			// WarnAfter is when the kubelet replaces the token (the API server may extend an
			// expiry for old clients; the kubelet still rotates it at its requested lifetime).
			WarnAfter int64 `json:"warnafter"`
			Pod       struct {
				Name string `json:"name"`
				UID  string `json:"uid"`
			} `json:"pod"`
			Node struct {
				Name string `json:"name"`
			} `json:"node"`
			ServiceAccount struct {
				Name string `json:"name"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Errorf("%s: the token's claims: %v", pod.Name, err)
		return
	}
	k := claims.Kubernetes
	if claims.Exp == 0 || k.WarnAfter == 0 || k.Pod.Name != pod.Name || k.Pod.UID != string(pod.UID) || k.Node.Name != pod.Spec.NodeName ||
		k.ServiceAccount.Name != pod.Spec.ServiceAccountName {
		t.Errorf("%s: token claims %s: want bound to the pod %s (%s) on %s, service account %s, with an expiry and a rotation time",
			pod.Name, payload, pod.Name, pod.UID, pod.Spec.NodeName, pod.Spec.ServiceAccountName)
	}
}
