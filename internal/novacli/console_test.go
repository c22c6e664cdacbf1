package novacli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestConsoleLogAsksTheAgentOfTheInstancesNode(t *testing.T) {
	var asked string
	agent := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.RequestURI()
		_, _ = w.Write([]byte("alive seq=7\n"))
	}))
	defer agent.Close()
	web := sampleInstance("web")
	web.Status.AgentReport = &v1.AgentReport{NodeName: "host-1", Console: &v1.AgentConsole{URL: agent.URL, CertificateSHA256: "pinned"}}
	h := newHarness(t, web)
	var pinned string
	h.opts.newAgentClient = func(c *v1.AgentConsole) (*http.Client, error) {
		pinned = c.CertificateSHA256
		return agent.Client(), nil
	}
	if err := h.opts.runConsoleLog(context.Background(), "web", 20, true); err != nil {
		t.Fatal(err)
	}
	if asked != "/v1/console/default/web?follow=true&tail=20" {
		t.Errorf("asked the agent for %s", asked)
	}
	if pinned != "pinned" || h.out.String() != "alive seq=7\n" {
		t.Errorf("trusted %q, printed %q", pinned, h.out.String())
	}

	// An instance on no node, or whose agent publishes no service, says so.
	shelved := sampleInstance("shelved")
	shelved.Status.NodeName, shelved.Status.VMState = "", v1.VMStateShelvedOffloaded
	quiet := sampleInstance("quiet")
	quiet.Status.AgentReport = &v1.AgentReport{NodeName: "host-1"}
	h = newHarness(t, shelved, quiet)
	for name, want := range map[string]string{"shelved": "runs on no node (ShelvedOffloaded)", "quiet": "publishes no console-log service"} {
		if err := h.opts.runConsoleLog(context.Background(), name, -1, false); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
}

// TestAgentClientPinsThePublishedCertificateAndShowsTheUsersCredentials: the client sends the
// kubeconfig's own credentials, and only to the certificate the agent published.
func TestAgentClientPinsThePublishedCertificateAndShowsTheUsersCredentials(t *testing.T) {
	var auth string
	agent := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
	}))
	defer agent.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: the-users-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	o := newOptions(genericiooptions.NewTestIOStreamsDiscard())
	o.configFlags.KubeConfig = &kubeconfig
	sum := sha256.Sum256(agent.Certificate().Raw)

	hc, err := o.agentClient(&v1.AgentConsole{URL: agent.URL, CertificateSHA256: hex.EncodeToString(sum[:])})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(agent.URL + "/v1/console/default/web")
	if err != nil {
		t.Fatalf("the published certificate: %v", err)
	}
	_ = resp.Body.Close()
	if auth != "Bearer the-users-token" {
		t.Errorf("the agent saw Authorization %q", auth)
	}

	hc, err = o.agentClient(&v1.AgentConsole{URL: agent.URL, CertificateSHA256: strings.Repeat("0", 64)})
	if err != nil {
		t.Fatal(err)
	}
	auth = ""
	resp, err = hc.Get(agent.URL + "/v1/console/default/web")
	if err == nil {
		_ = resp.Body.Close()
	}
	if err == nil || auth != "" {
		t.Errorf("another certificate was trusted (%v), the token shown: %q", err, auth)
	}
}
