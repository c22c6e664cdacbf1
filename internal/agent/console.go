package agent

import (
	"bytes"
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
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// ConsoleServer serves the serial console logs of this node's guests, which only the node
// has, over HTTPS: GET /v1/console/NAMESPACE/NAME[?tail=N][&follow=true]. Each caller shows
// its own credentials (a bearer token, or a client certificate of the cluster's client CA); the
// API server says who it is (TokenReview) and whether it may get instances/console of that
// instance (SubjectAccessReview), as it would for a subresource of its own.
type ConsoleServer struct {
	// Addr is where it listens (host:port); AdvertiseHost is the node address clients reach
	// it at, in its certificate and its published URL.
	Addr, AdvertiseHost string
	NodeName            string
	Config              *rest.Config
	// Reader reads the instances on this node (the agent's cache).
	Reader  client.Reader
	Storage interface {
		ConsoleLog(uid string) (string, error)
	}
	// FollowPoll is how often a followed log is read for more (500 ms when zero).
	FollowPoll time.Duration

	cert  tls.Certificate
	authn authenticator.Request
	authz authorizer.Authorizer
}

// consolePath is the service's path prefix.
const consolePath = "/v1/console/"

// Prepare makes the serving certificate, so that it can be published before the server starts.
func (s *ConsoleServer) Prepare() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "kubenova-agent-" + s.NodeName},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(s.AdvertiseHost); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{s.AdvertiseHost}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	s.cert, err = tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return err
}

// Published is what the agent reports of the service in its instances' agentReport.
func (s *ConsoleServer) Published() *v1.AgentConsole {
	_, port, _ := net.SplitHostPort(s.Addr)
	sum := sha256.Sum256(s.cert.Certificate[0])
	return &v1.AgentConsole{URL: "https://" + net.JoinHostPort(s.AdvertiseHost, port), CertificateSHA256: hex.EncodeToString(sum[:])}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every agent serves.
func (s *ConsoleServer) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable: it serves until ctx ends.
func (s *ConsoleServer) Start(ctx context.Context) error {
	if err := s.delegate(ctx); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+consolePath+"{namespace}/{name}", s.serveConsole)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx },
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{s.cert}, MinVersion: tls.VersionTLS12,
			// Certificates are checked by the authenticator, against the cluster's client CA.
			ClientAuth: tls.RequestClientCert}}
	l, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("console service: %w", err)
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.FromContext(ctx).Info("serving console logs", "address", s.Addr, "url", s.Published().URL)
	if err := srv.ServeTLS(l, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// delegate sets up authentication and authorization by the API server. Client certificates
// are accepted when the cluster publishes its client CA (the ConfigMap
// kube-system/extension-apiserver-authentication, as for extension API servers); bearer
// tokens always.
func (s *ConsoleServer) delegate(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	backoff := &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5}
	authnConfig := authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                &apiserver.AnonymousAuthConfig{Enabled: false},
		CacheTTL:                 time.Minute,
		TokenAccessReviewClient:  cs.AuthenticationV1(),
		TokenAccessReviewTimeout: 10 * time.Second,
		WebhookRetryBackoff:      backoff,
	}
	cm, err := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
	switch {
	case err == nil && cm.Data["client-ca-file"] != "":
		ca, err := dynamiccertificates.NewStaticCAContent("cluster-client-ca", []byte(cm.Data["client-ca-file"]))
		if err != nil {
			return fmt.Errorf("the cluster's client CA: %w", err)
		}
		authnConfig.ClientCertificateCAContentProvider = ca
	case err != nil && !apierrors.IsNotFound(err) && !apierrors.IsForbidden(err):
		return fmt.Errorf("the cluster's client CA: %w", err)
	default:
		log.FromContext(ctx).Info("the cluster publishes no client CA: console logs for bearer tokens only")
	}
	if s.authn, _, err = authnConfig.New(); err != nil {
		return err
	}
	s.authz, err = authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: cs.AuthorizationV1(),
		AllowCacheTTL:             time.Minute,
		DenyCacheTTL:              10 * time.Second,
		WebhookRetryBackoff:       backoff,
	}.New()
	return err
}

func (s *ConsoleServer) serveConsole(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	key := types.NamespacedName{Namespace: req.PathValue("namespace"), Name: req.PathValue("name")}
	logger := log.FromContext(ctx).WithValues("namespace", key.Namespace, "name", key.Name, "operation", "ConsoleLog")
	res, ok, err := s.authn.AuthenticateRequest(req)
	if err != nil || !ok {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	attrs := authorizer.AttributesRecord{User: res.User, Verb: "get", Namespace: key.Namespace, Name: key.Name,
		APIGroup: v1.GroupVersion.Group, APIVersion: v1.GroupVersion.Version, Resource: "instances", Subresource: "console",
		ResourceRequest: true}
	decision, reason, err := s.authz.Authorize(ctx, attrs)
	if err != nil {
		logger.Error(err, "authorization failed")
		http.Error(w, "authorization failed", http.StatusInternalServerError)
		return
	}
	if decision != authorizer.DecisionAllow {
		http.Error(w, fmt.Sprintf("%s may not get instances/console of %s in namespace %s %s", res.User.GetName(), key.Name, key.Namespace, reason),
			http.StatusForbidden)
		return
	}
	inst := &v1.Instance{}
	if err := s.Reader.Get(ctx, key, inst); apierrors.IsNotFound(err) {
		http.Error(w, fmt.Sprintf("no instance %s runs on node %s", key, s.NodeName), http.StatusNotFound)
		return
	} else if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	path, err := s.Storage.ConsoleLog(string(inst.UID))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	tail := -1
	if t := req.URL.Query().Get("tail"); t != "" {
		if tail, err = strconv.Atoi(t); err != nil {
			http.Error(w, "tail must be a number of lines", http.StatusBadRequest)
			return
		}
	}
	follow, _ := strconv.ParseBool(req.URL.Query().Get("follow"))
	logger.V(1).Info("console log asked", "user", res.User.GetName(), "tail", tail, "follow", follow)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	offset, err := writeTail(w, path, tail)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if !follow {
		return
	}
	s.follow(ctx, w, path, offset)
}

// maxTailRead bounds how much of the log's end is read to find its last lines.
const maxTailRead = 1 << 20

// writeTail writes the log's last n lines (all of it when n < 0) and returns where it ended.
func writeTail(w io.Writer, path string, n int) (int64, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, nil // the guest has printed nothing yet
	}
	if err != nil {
		return 0, err
	}
	end := int64(len(b))
	if n >= 0 {
		if len(b) > maxTailRead {
			b = b[len(b)-maxTailRead:]
		}
		b = lastLines(b, n)
	}
	_, err = w.Write(b)
	return end, err
}

// lastLines is the end of b holding its last n lines (a last line without its newline counts).
func lastLines(b []byte, n int) []byte {
	if n == 0 {
		return nil
	}
	i := len(b)
	if i > 0 && b[i-1] == '\n' {
		i--
	}
	for ; n > 0; n-- {
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return b
		}
		i = j
	}
	return b[i+1:]
}

// follow writes what the guest prints from offset on until the caller goes.
func (s *ConsoleServer) follow(ctx context.Context, w http.ResponseWriter, path string, offset int64) {
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
			return
		case <-ticker.C:
		}
		next, err := copyFrom(w, path, offset)
		if err != nil {
			return
		}
		if next != offset && flusher != nil {
			flusher.Flush()
		}
		offset = next
	}
}

// copyFrom writes the file's bytes past offset and returns the new end; a file that shrank
// (a new log) is written from its start.
func copyFrom(w io.Writer, path string, offset int64) (int64, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return offset, nil
	}
	if err != nil {
		return offset, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return offset, err
	}
	if st.Size() < offset {
		offset = 0
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return offset, err
	}
	n, err := io.Copy(w, f)
	return offset + n, err
}
