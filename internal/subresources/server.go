// Package subresources is the manager's aggregated API (subresources.compute.kubenova.io): the
// subresources of instances that kube-apiserver cannot serve from etcd. Today that is
// instances/log, the guest's serial console log, which only the instance's node has.
//
// kube-apiserver authenticates and authorizes each user as for any API (RBAC on
// instances/log in this group) and proxies the request here with the user's name in the
// front-proxy headers and its own client certificate. The manager checks both, fetches the log
// from the node's agent under its own identity, and relays it, the way kube-apiserver relays
// pods/log from kubelets. No user's credentials reach a node.
package subresources

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/consolelog"
)

// The API this package serves.
const (
	Group          = consolelog.APIGroup
	Version        = consolelog.APIVersion
	LogSubresource = consolelog.Subresource
	// APIServiceName is the APIService that registers it with kube-apiserver.
	APIServiceName = Version + "." + Group
)

// Server serves the aggregated API over HTTPS.
type Server struct {
	// Addr is where it listens (host:port).
	Addr string
	// Namespace is the manager's; ServiceName the Service in it that kube-apiserver reaches
	// the manager through, which its serving certificate names; SecretName keeps that
	// certificate, shared by every replica.
	Namespace, ServiceName, SecretName string
	// Client reads instances and Hypervisors (the manager's cache) and writes the Secret and
	// the APIService's CA bundle; APIReader reads those two and the front proxy's settings
	// uncached.
	Client    client.Client
	APIReader client.Reader
	// Clientset checks users' rights (SubjectAccessReview) and mints the manager's tokens.
	Clientset kubernetes.Interface
	// Agents calls the nodes' agents.
	Agents *consolelog.AgentClient
	// Evictions answers evictions of reservation pods (EvictionPath); nil lets them through.
	Evictions ReservationEvictions
	// RefreshPeriod is how often the front proxy's CA and the serving certificate are read
	// again (five minutes when zero).
	RefreshPeriod time.Duration

	// listening: the listener is open, with what it serves with (ReadyCheck).
	listening  atomic.Bool
	frontProxy atomic.Pointer[frontProxyConfig]
	serving    atomic.Pointer[tls.Certificate]
	authn      authenticator.Request
	authz      authorizer.Authorizer
	tokens     *agentTokens
}

// ReadyCheck is a readiness check (healthz.Checker): a replica is ready once its aggregated API
// listens, its serving certificate and the front proxy's settings in hand. Until then the
// Service sends kube-apiserver's requests to other replicas, not to a closed port.
func (s *Server) ReadyCheck(*http.Request) error {
	if !s.listening.Load() {
		return errors.New("the aggregated API does not listen yet (its certificate or the front proxy's settings are missing; see the log)")
	}
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica serves.
func (s *Server) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable. What the server needs from the cluster (the front proxy's
// settings, its certificate) is retried until it comes: the rest of the manager runs on
// meanwhile, and kube-apiserver reports the APIService unavailable.
func (s *Server) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("subresources")
	period := s.RefreshPeriod
	if period == 0 {
		period = 5 * time.Minute
	}
	err := wait.PollUntilContextCancel(ctx, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		if err := s.refresh(ctx); err != nil {
			logger.Error(err, "the aggregated API cannot serve yet; retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return nil // ctx ended
	}
	s.authn = s.frontProxyAuthenticator()
	if s.authz, err = (authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: s.Clientset.AuthorizationV1(),
		AllowCacheTTL:             10 * time.Second,
		DenyCacheTTL:              10 * time.Second,
		WebhookRetryBackoff:       &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5},
	}).New(); err != nil {
		return err
	}
	s.tokens = &agentTokens{clientset: s.Clientset}
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := s.refresh(ctx); err != nil {
			logger.Error(err, "refresh the front proxy's CA and the serving certificate")
		}
	}, period)

	logger.Info("serving the aggregated API", "address", s.Addr, "apiService", APIServiceName)
	err = consolelog.ServeTLS(ctx, s.Addr, s.Handler(), &tls.Config{MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.serving.Load(), nil },
		// The front proxy's certificate is checked by the authenticator, against the CA
		// kube-apiserver publishes.
		ClientAuth: tls.RequestClientCert}, func() { s.listening.Store(true) })
	if err != nil {
		return fmt.Errorf("aggregated API: %w", err)
	}
	return nil
}

// refresh reads the front proxy's settings and the serving certificate, making the latter if
// needed, and keeps the APIService's CA bundle in step.
func (s *Server) refresh(ctx context.Context) error {
	fp, err := readFrontProxyConfig(ctx, s.APIReader)
	if err != nil {
		return err
	}
	s.frontProxy.Store(fp)
	cert, caBundle, err := s.ensureServingCert(ctx)
	if err != nil {
		return err
	}
	s.serving.Store(cert)
	if err := s.ensureCABundle(ctx, caBundle); err != nil {
		return err
	}
	return s.ensureWebhookCABundle(ctx, caBundle)
}

// Handler serves discovery and the subresources.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	prefix := "/apis/" + Group + "/" + Version
	mux.HandleFunc("GET /apis", s.authenticated(s.serveGroupList))
	mux.HandleFunc("GET /apis/"+Group, s.authenticated(s.serveGroup))
	mux.HandleFunc("GET "+prefix, s.authenticated(s.serveResourceList))
	mux.HandleFunc("GET "+prefix+"/namespaces/{namespace}/instances/{name}/"+LogSubresource, s.authenticated(s.serveLog))
	// kube-apiserver calls admission webhooks without the front proxy's certificate.
	mux.HandleFunc("POST "+EvictionPath, s.serveEviction)
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeStatus(w, apierrors.NewNotFound(metav1.SchemeGroupVersion.WithResource("").GroupResource(), req.URL.Path))
	})
	return mux
}

// userKey carries the authenticated user in a request's context.
type userKey struct{}

// authenticated lets in only requests kube-apiserver proxied, with the user it vouches for.
func (s *Server) authenticated(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		res, ok, err := s.authn.AuthenticateRequest(req)
		if err != nil || !ok {
			writeStatus(w, apierrors.NewUnauthorized("only kube-apiserver's front proxy may call the aggregated API"))
			return
		}
		next(w, req.WithContext(context.WithValue(req.Context(), userKey{}, res)))
	}
}

func (s *Server) serveGroupList(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
		Groups: []metav1.APIGroup{apiGroup()}})
}

func (s *Server) serveGroup(w http.ResponseWriter, _ *http.Request) {
	g := apiGroup()
	g.TypeMeta = metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}
	writeJSON(w, &g)
}

func apiGroup() metav1.APIGroup {
	gv := metav1.GroupVersionForDiscovery{GroupVersion: Group + "/" + Version, Version: Version}
	return metav1.APIGroup{Name: Group, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv}
}

func (s *Server) serveResourceList(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: Group + "/" + Version,
		APIResources: []metav1.APIResource{{Name: "instances/" + LogSubresource, Namespaced: true, Kind: "Instance", Verbs: []string{"get"}}}})
}

// serveLog relays an instance's console log from its node's agent.
func (s *Server) serveLog(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	key := types.NamespacedName{Namespace: req.PathValue("namespace"), Name: req.PathValue("name")}
	logger := log.FromContext(ctx).WithValues("namespace", key.Namespace, "name", key.Name, "operation", "ConsoleLog")
	user := ctx.Value(userKey{}).(*authenticator.Response).User
	instances := v1.GroupVersion.WithResource("instances").GroupResource()
	// kube-apiserver authorized the request before it proxied it; asking again keeps a
	// request that reached the manager some other way from reading anything.
	decision, reason, err := s.authz.Authorize(ctx, authorizer.AttributesRecord{User: user, Verb: "get",
		Namespace: key.Namespace, Name: key.Name, APIGroup: Group, APIVersion: Version,
		Resource: "instances", Subresource: LogSubresource, ResourceRequest: true})
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(fmt.Errorf("authorize: %w", err)))
		return
	}
	if decision != authorizer.DecisionAllow {
		writeStatus(w, apierrors.NewForbidden(schema.GroupResource{Group: Group, Resource: "instances"}, key.Name+"/"+LogSubresource, errors.New(reason)))
		return
	}
	opts, err := consolelog.ParseOptions(req.URL.Query())
	if err != nil {
		writeStatus(w, apierrors.NewBadRequest(err.Error()))
		return
	}
	inst := &v1.Instance{}
	if err := s.Client.Get(ctx, key, inst); err != nil {
		if apierrors.IsNotFound(err) {
			err = apierrors.NewNotFound(instances, key.Name)
		}
		writeStatus(w, err)
		return
	}
	node := inst.Status.NodeName
	if node == "" {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("instance %s is on no node (%s): there is no console log to read",
			key.Name, orNone(string(inst.Status.VMState)))))
		return
	}
	hv := &v1.Hypervisor{}
	if err := s.Client.Get(ctx, client.ObjectKey{Name: node}, hv); err != nil {
		writeStatus(w, apierrors.NewServiceUnavailable(fmt.Sprintf("the Hypervisor of node %s: %v", node, err)))
		return
	}
	if hv.Status.ConsoleLogService == nil {
		writeStatus(w, apierrors.NewServiceUnavailable(fmt.Sprintf("the agent of node %s serves no console logs (its --console-bind-address)", node)))
		return
	}
	token, err := s.tokens.For(ctx, node)
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	body, err := s.Agents.Get(ctx, hv.Status.ConsoleLogService, token, key.Namespace, key.Name, opts)
	var refused *consolelog.AgentError
	switch {
	case errors.As(err, &refused) && refused.Code == http.StatusNotFound:
		// The instance moved on since the cache saw it: the caller may ask again.
		writeStatus(w, apierrors.NewServiceUnavailable(fmt.Sprintf("node %s: %s", node, refused.Message)))
		return
	case err != nil:
		logger.Error(err, "fetch the console log", "node", node)
		writeStatus(w, apierrors.NewServiceUnavailable(fmt.Sprintf("the console log from node %s: %v", node, err)))
		return
	}
	defer func() { _ = body.Close() }()
	logger.V(1).Info("relaying the console log", "user", user.GetName(), "node", node, "tailLines", opts.TailLines, "follow", opts.Follow)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		// The answer starts now, even when a followed log has nothing to send yet.
		flusher.Flush()
	}
	if err := relay(w, flusher, body); err != nil {
		logger.Error(err, "relay the console log", "node", node)
		// The caller sees a broken stream, not a log that ended.
		panic(http.ErrAbortHandler)
	}
}

// relay copies the agent's stream, flushing each piece, so that a followed log arrives as the
// guest prints it. It fails if the agent's stream breaks; a caller that went away is no error.
func relay(w io.Writer, flusher http.Flusher, body io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "no state yet"
	}
	return s
}

func writeJSON(w http.ResponseWriter, obj any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(obj)
}

// writeStatus answers with err as a Kubernetes Status, which kubectl and client-go print.
func writeStatus(w http.ResponseWriter, err error) {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		status = apierrors.NewInternalError(err)
	}
	st := status.Status()
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}
