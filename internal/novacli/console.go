package novacli

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func newConsoleLogCommand(o *options) *cobra.Command {
	var tail int
	var follow bool
	cmd := &cobra.Command{
		Use:   "console-log NAME",
		Short: "Print an instance's serial console log, as nova console-log does",
		Long: "console-log fetches the guest's serial console from the agent of the node it runs on (the log\n" +
			"is kept there), with your own credentials: you need get on instances/console in the\n" +
			"instance's namespace, which the view, edit and admin roles grant.",
		Example: `  # The whole log
  kubectl nova console-log web

  # The last 20 lines, then what the guest prints until Ctrl-C
  kubectl nova console-log web --tail 20 -f`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runConsoleLog(cmd.Context(), args[0], tail, follow)
		},
	}
	cmd.Flags().IntVar(&tail, "tail", -1, "how many of the last lines to print (Nova's --length); -1 prints all")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "go on printing what the guest prints")
	return cmd
}

func (o *options) runConsoleLog(ctx context.Context, name string, tail int, follow bool) error {
	c, key, err := o.instanceKey(name)
	if err != nil {
		return err
	}
	inst := &v1.Instance{}
	if err := c.Get(ctx, key, inst); err != nil {
		return err
	}
	if inst.Status.NodeName == "" {
		return fmt.Errorf("instance %s runs on no node (%s): there is no console log to read", name, orDash(string(inst.Status.VMState)))
	}
	report := inst.Status.AgentReport
	if report == nil || report.NodeName != inst.Status.NodeName || report.Console == nil || report.Console.URL == "" {
		return fmt.Errorf("the agent of node %s publishes no console-log service (its --console-bind-address)", inst.Status.NodeName)
	}
	console := report.Console
	hc, err := o.agentClient(console)
	if err != nil {
		return err
	}
	query := url.Values{"tail": {strconv.Itoa(tail)}}
	if follow {
		query.Set("follow", "true")
	}
	target := strings.TrimSuffix(console.URL, "/") + "/v1/console/" + url.PathEscape(inst.Namespace) + "/" + url.PathEscape(inst.Name) + "?" + query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("the agent of node %s: %w", inst.Status.NodeName, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("the agent of node %s answered %s: %s", inst.Status.NodeName, resp.Status, strings.TrimSpace(string(b)))
	}
	_, err = io.Copy(o.streams.Out, resp.Body)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// agentClient is an HTTP client with the user's own credentials (token, client certificate or
// exec plugin, from the kubeconfig) that trusts exactly the certificate whose digest the node's
// agent published in the instance's agentReport, which only that agent may write.
func (o *options) agentClient(console *v1.AgentConsole) (*http.Client, error) {
	if o.newAgentClient != nil {
		return o.newAgentClient(console)
	}
	cfg, err := o.configFlags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	cfg = rest.CopyConfig(cfg)
	tlsConfig, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, err
	}
	if tlsConfig == nil {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tlsConfig.RootCAs, tlsConfig.ServerName = nil, ""
	// Verified below by its digest, not by a CA: the agent's certificate is its own.
	tlsConfig.InsecureSkipVerify = true //nolint:gosec // pinned in VerifyPeerCertificate
	tlsConfig.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			return errors.New("the agent showed no certificate")
		}
		sum := sha256.Sum256(rawCerts[0])
		if !strings.EqualFold(hex.EncodeToString(sum[:]), console.CertificateSHA256) {
			return fmt.Errorf("the agent's certificate is not the one it published (sha256 %x)", sum)
		}
		return nil
	}
	transport, err := rest.HTTPWrappersForConfig(cfg, &http.Transport{TLSClientConfig: tlsConfig, Proxy: http.ProxyFromEnvironment})
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: transport}, nil
}
