package subresources

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// testCA is a CA that signs client certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "test-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) client(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// frontProxySettings is the ConfigMap data kube-apiserver publishes with ca as its front proxy's CA.
func frontProxySettings(ca *testCA) map[string]string {
	return map[string]string{
		"requestheader-client-ca-file":       string(ca.pem),
		"requestheader-allowed-names":        `["front-proxy-client"]`,
		"requestheader-username-headers":     `["X-Remote-User"]`,
		"requestheader-group-headers":        `["X-Remote-Group"]`,
		"requestheader-extra-headers-prefix": `["X-Remote-Extra-"]`,
	}
}

func TestParseFrontProxyConfig(t *testing.T) {
	ca := newTestCA(t)
	fp, err := parseFrontProxyConfig(frontProxySettings(ca))
	if err != nil {
		t.Fatal(err)
	}
	if len(fp.allowedNames) != 1 || fp.userHeaders[0] != "X-Remote-User" || fp.groupHeaders[0] != "X-Remote-Group" {
		t.Errorf("parsed %+v", fp)
	}
	for name, data := range map[string]map[string]string{
		"no front proxy":  {},
		"no certificate":  {"requestheader-client-ca-file": "junk", "requestheader-username-headers": `["X-Remote-User"]`},
		"no user header":  {"requestheader-client-ca-file": string(ca.pem)},
		"malformed names": {"requestheader-client-ca-file": string(ca.pem), "requestheader-username-headers": `X-Remote-User`},
	} {
		if _, err := parseFrontProxyConfig(data); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// TestOnlyTheFrontProxyGetsIn serves discovery over TLS and calls it as kube-apiserver's front
// proxy does, and as others might.
func TestOnlyTheFrontProxyGetsIn(t *testing.T) {
	ca := newTestCA(t)
	fp, err := parseFrontProxyConfig(frontProxySettings(ca))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{}
	s.frontProxy.Store(fp)
	s.authn = s.frontProxyAuthenticator()
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	defer srv.Close()

	// call returns the status code and the body of one request.
	call := func(cert *tls.Certificate, user, path string) (int, []byte) {
		t.Helper()
		transport := srv.Client().Transport.(*http.Transport).Clone()
		if cert != nil {
			transport.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if user != "" {
			req.Header.Set("X-Remote-User", user)
		}
		resp, err := (&http.Client{Transport: transport}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	proxy := ca.client(t, "front-proxy-client")
	code, body := call(&proxy, "alice", "/apis/"+Group+"/"+Version)
	if code != http.StatusOK {
		t.Fatalf("the front proxy: %d %s", code, body)
	}
	var list metav1.APIResourceList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	if list.GroupVersion != Group+"/"+Version || len(list.APIResources) != 1 || list.APIResources[0].Name != "instances/log" {
		t.Errorf("discovery %+v", list)
	}

	other := ca.client(t, "someone-else")
	stranger := newTestCA(t).client(t, "front-proxy-client")
	logPath := "/apis/" + Group + "/" + Version + "/namespaces/default/instances/web/log"
	for _, tc := range []struct {
		name       string
		cert       *tls.Certificate
		user, path string
	}{
		{"no certificate", nil, "alice", "/apis"},
		{"a certificate with another name", &other, "alice", "/apis"},
		{"a certificate of another CA", &stranger, "alice", "/apis"},
		{"the front proxy naming no one", &proxy, "", "/apis"},
		{"a log without the front proxy", nil, "alice", logPath},
		{"a log with another name's certificate", &other, "alice", logPath},
		{"a log with another CA's certificate", &stranger, "alice", logPath},
		{"a log through the proxy naming no one", &proxy, "", logPath},
	} {
		if code, body := call(tc.cert, tc.user, tc.path); code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", tc.name, code, body)
		}
	}
	if code, _ := call(&proxy, "alice", "/apis/"+Group+"/"+Version+"/namespaces/default/instances"); code != http.StatusNotFound {
		t.Errorf("a path it does not serve: %d", code)
	}

	// A user the front proxy names still needs the right: the manager asks again, and stops
	// at a refusal (it has no client to go further with here).
	var asked authorizer.Attributes
	for _, decision := range []authorizer.Decision{authorizer.DecisionDeny, authorizer.DecisionNoOpinion} {
		s.authz = authorizer.AuthorizerFunc(func(_ context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
			asked = a
			return decision, "no rule allows it", nil
		})
		code, body := call(&proxy, "alice", logPath)
		if code != http.StatusForbidden || !strings.Contains(string(body), "no rule allows it") {
			t.Errorf("decision %d: %d %s, want 403", decision, code, body)
		}
	}
	if asked.GetUser().GetName() != "alice" || asked.GetVerb() != "get" || asked.GetAPIGroup() != Group ||
		asked.GetResource() != "instances" || asked.GetSubresource() != "log" || asked.GetNamespace() != "default" || asked.GetName() != "web" {
		t.Errorf("asked about %+v", asked)
	}
}

func TestServingCertificate(t *testing.T) {
	s := &Server{Namespace: "kubenova-system", ServiceName: "kubenova-manager-subresources"}
	data, err := newServingSecretData(s.serviceHost(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, ok := s.usable(data)
	if !ok {
		t.Fatal("a new certificate is not usable")
	}
	// kube-apiserver checks it against the APIService's bundle, for the Service's name.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data["ca.crt"]) {
		t.Fatal("no CA in the bundle")
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "kubenova-manager-subresources.kubenova-system.svc"}); err != nil {
		t.Fatalf("the bundle does not vouch for the certificate: %v", err)
	}
	if other := (&Server{Namespace: "elsewhere", ServiceName: s.ServiceName}); func() bool { _, ok := other.usable(data); return ok }() {
		t.Error("a certificate for another Service's name is usable")
	}
	// A renewal keeps the previous CA in the bundle, for replicas still serving the old one.
	renewed, err := newServingSecretData(s.serviceHost(), data["ca.crt"])
	if err != nil {
		t.Fatal(err)
	}
	var cas int
	for rest := renewed["ca.crt"]; ; cas++ {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
	}
	if cas != 2 {
		t.Errorf("the renewed bundle holds %d CAs, want 2", cas)
	}
}

// A replica is not ready before its aggregated API listens: the Service would send
// kube-apiserver's requests to a closed port.
func TestNotReadyBeforeItListens(t *testing.T) {
	s := &Server{}
	if err := s.ReadyCheck(nil); err == nil {
		t.Error("ready before listening")
	}
	s.listening.Store(true)
	if err := s.ReadyCheck(nil); err != nil {
		t.Errorf("not ready while listening: %v", err)
	}
}
