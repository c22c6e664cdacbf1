package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/consolelog"
)

// ConsoleServer serves the serial console logs of this node's guests, which only the node has,
// over HTTPS to the manager alone: users reach them through the API server, which authenticates
// and authorizes them, and the manager's aggregated API, which relays (kubectl nova
// console-log). No user's credentials ever reach a node.
//
// The manager shows a token of its service account whose audience is this node
// (consolelog.Audience), so that a node that replays what it was shown gets into nothing but
// itself: the API server refuses the token, and other nodes' agents expect their own audience.
type ConsoleServer struct {
	// Addr is where it listens (host:port); AdvertiseHost is the node address the manager
	// reaches it at, in its certificate and its published URL.
	Addr, AdvertiseHost string
	NodeName            string
	// StateDir keeps the serving key and certificate across restarts, so that the digest
	// published in the Hypervisor stays put.
	StateDir string
	// Clients are the users allowed in (the manager's service account).
	Clients []string
	// TokenReviews checks the tokens shown.
	TokenReviews authenticationv1.AuthenticationV1Interface
	// Reader reads the instances on this node (the agent's cache).
	Reader  client.Reader
	Storage interface {
		ConsoleLog(uid string) (string, error)
	}
	// FollowPoll is how often a followed log is read for more (500 ms when zero).
	FollowPoll time.Duration

	cert  tls.Certificate
	authn authenticator.Request
}

// Prepare loads the serving certificate from StateDir, or makes one and keeps it there, so
// that it can be published before the server starts.
func (s *ConsoleServer) Prepare() error {
	certPath, keyPath := filepath.Join(s.StateDir, "console-tls.crt"), filepath.Join(s.StateDir, "console-tls.key")
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && s.stillFits(cert) {
		s.cert = cert
		return nil
	}
	certPEM, keyPEM, err := selfSignedServing("kubenova-agent-"+s.NodeName, s.AdvertiseHost)
	if err != nil {
		return err
	}
	if s.cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return err
	}
	if err := os.MkdirAll(s.StateDir, 0o700); err != nil {
		return err
	}
	// The key first: a certificate on disk always has its key.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, certPEM, 0o644)
}

// stillFits says whether a kept certificate names the advertised address and is good for
// another month.
func (s *ConsoleServer) stillFits(cert tls.Certificate) bool {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil || time.Until(leaf.NotAfter) < 30*24*time.Hour {
		return false
	}
	return leaf.VerifyHostname(s.AdvertiseHost) == nil
}

// selfSignedServing makes a self-signed serving certificate for host, valid for a year.
func selfSignedServing(commonName, host string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: commonName},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Published is what the agent reports of the service in its Hypervisor.
func (s *ConsoleServer) Published() *v1.ConsoleLogService {
	_, port, _ := net.SplitHostPort(s.Addr)
	sum := sha256.Sum256(s.cert.Certificate[0])
	return &v1.ConsoleLogService{URL: "https://" + net.JoinHostPort(s.AdvertiseHost, port), CertificateSHA256: hex.EncodeToString(sum[:])}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every agent serves.
func (s *ConsoleServer) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable: it serves until ctx ends.
func (s *ConsoleServer) Start(ctx context.Context) error {
	var err error
	s.authn, _, err = authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                &apiserver.AnonymousAuthConfig{Enabled: false},
		CacheTTL:                 time.Minute,
		TokenAccessReviewClient:  s.TokenReviews,
		TokenAccessReviewTimeout: 10 * time.Second,
		WebhookRetryBackoff:      &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5},
		APIAudiences:             s.audiences(),
	}.New()
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+consolelog.AgentPath+"{namespace}/{name}", s.serveConsole)
	log.FromContext(ctx).Info("serving console logs to the manager", "address", s.Addr, "url", s.Published().URL)
	err = consolelog.ServeTLS(ctx, s.Addr, mux, &tls.Config{Certificates: []tls.Certificate{s.cert}, MinVersion: tls.VersionTLS12}, nil)
	if err != nil {
		return fmt.Errorf("console-log service: %w", err)
	}
	return nil
}

// audiences are those a token shown here must have: this node's alone.
func (s *ConsoleServer) audiences() authenticator.Audiences {
	return authenticator.Audiences{consolelog.Audience(s.NodeName)}
}

func (s *ConsoleServer) serveConsole(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	key := types.NamespacedName{Namespace: req.PathValue("namespace"), Name: req.PathValue("name")}
	logger := log.FromContext(ctx).WithValues("namespace", key.Namespace, "name", key.Name, "operation", "ConsoleLog")
	// The token must have been minted for this node: the audience goes into the TokenReview.
	res, ok, err := s.authn.AuthenticateRequest(req.WithContext(authenticator.WithAudiences(ctx, s.audiences())))
	if err != nil || !ok {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if !slices.Contains(s.Clients, res.User.GetName()) {
		http.Error(w, res.User.GetName()+" may not read console logs here: only the manager may", http.StatusForbidden)
		return
	}
	opts, err := consolelog.ParseOptions(req.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	inst, err := s.instance(ctx, key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	path, err := s.Storage.ConsoleLog(string(inst.UID))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	logger.V(1).Info("console log asked", "tailLines", opts.TailLines, "follow", opts.Follow)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	pos, err := consolelog.WriteTail(w, path, opts.TailLines)
	if err != nil {
		logger.Error(err, "read the console log")
		panic(http.ErrAbortHandler) // the caller sees a broken stream, not a short log
	}
	if opts.Follow {
		s.follow(ctx, w, key, inst.UID, path, pos)
	}
}

// instance is the instance key names, if it is on this node now.
func (s *ConsoleServer) instance(ctx context.Context, key types.NamespacedName) (*v1.Instance, error) {
	inst := &v1.Instance{}
	err := s.Reader.Get(ctx, key, inst)
	if err == nil && inst.Status.NodeName != s.NodeName {
		err = apierrors.NewNotFound(v1.GroupVersion.WithResource("instances").GroupResource(), key.Name)
	}
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("no instance %s is on node %s", key, s.NodeName)
	}
	return inst, err
}

// follow writes what the guest prints from pos on until the caller goes or the instance leaves
// the node (deleted, or moved elsewhere, where another agent has its log): then the stream ends
// cleanly. A read that fails, or an agent that stops, breaks the stream instead, so that the
// caller does not take it for the end of the log.
func (s *ConsoleServer) follow(ctx context.Context, w http.ResponseWriter, key types.NamespacedName, uid types.UID, path string, pos consolelog.Position) {
	poll := s.FollowPoll
	if poll == 0 {
		poll = 500 * time.Millisecond
	}
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			panic(http.ErrAbortHandler)
		case <-ticker.C:
		}
		next, err := consolelog.CopyFrom(w, path, pos)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		if next.Offset != pos.Offset && flusher != nil {
			flusher.Flush()
		}
		pos = next
		if inst, err := s.instance(ctx, key); err != nil || inst.UID != uid {
			// What it printed before it left is written above; the stream ends.
			return
		}
	}
}

// consoleStateDir is where an agent keeps its console-log service's key and certificate: under
// the storage root, by node, since nodes may share the root.
func consoleStateDir(storageRoot, node string) string {
	return filepath.Join(storageRoot, "_agents", node)
}
