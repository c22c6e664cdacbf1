package subresources

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// The serving certificate lives in a Secret of the manager's namespace, so that every replica
// serves the same one and a restart changes nothing: ca.crt is what the APIService trusts (the
// current CA, and the previous one while replicas pick up a renewal), tls.crt and tls.key what
// the manager serves with. A certificate with less than renewBefore left is renewed.
const (
	certValidity = 365 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
)

// serviceHost is the name kube-apiserver checks the manager's certificate against.
func (s *Server) serviceHost() string { return s.ServiceName + "." + s.Namespace + ".svc" }

// ensureServingCert returns the serving certificate and the CA bundle to publish, making or
// renewing them in the Secret when needed. Replicas that race for it agree on the winner's.
func (s *Server) ensureServingCert(ctx context.Context) (*tls.Certificate, []byte, error) {
	key := client.ObjectKey{Namespace: s.Namespace, Name: s.SecretName}
	for range 3 {
		secret := &corev1.Secret{}
		err := s.APIReader.Get(ctx, key, secret)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, nil, fmt.Errorf("secret %s: %w", key, err)
		}
		found := err == nil
		if found {
			if cert, ok := s.usable(secret.Data); ok {
				return cert, secret.Data["ca.crt"], nil
			}
		}
		data, err := newServingSecretData(s.serviceHost(), secret.Data["ca.crt"])
		if err != nil {
			return nil, nil, err
		}
		if found {
			secret.Data = data
			err = s.Client.Update(ctx, secret)
		} else {
			secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
				Labels: map[string]string{"app.kubernetes.io/name": "kubenova", "app.kubernetes.io/component": "manager"}},
				Type: corev1.SecretTypeTLS, Data: data}
			err = s.Client.Create(ctx, secret)
		}
		if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
			continue // another replica wrote it first: use theirs
		}
		if err != nil {
			return nil, nil, fmt.Errorf("secret %s: %w", key, err)
		}
		log.FromContext(ctx).Info("made the aggregated API's serving certificate", "secret", key, "host", s.serviceHost())
		cert, _ := s.usable(data)
		return cert, data["ca.crt"], nil
	}
	return nil, nil, fmt.Errorf("secret %s keeps changing under the manager", key)
}

// usable is the certificate of a Secret's data if it names the service and is not due for
// renewal.
func (s *Server) usable(data map[string][]byte) (*tls.Certificate, bool) {
	cert, err := tls.X509KeyPair(data["tls.crt"], data["tls.key"])
	if err != nil || len(data["ca.crt"]) == 0 {
		return nil, false
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil || time.Until(leaf.NotAfter) < renewBefore || leaf.VerifyHostname(s.serviceHost()) != nil {
		return nil, false
	}
	return &cert, true
}

// newServingSecretData makes a CA and a serving certificate for host signed by it (x509 draws
// their serial numbers). The CA's key is not kept: a renewal makes a new CA, and the bundle
// keeps the previous one beside it.
func newServingSecretData(host string, previousBundle []byte) (map[string][]byte, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "kubenova-manager-ca@" + now.UTC().Format(time.RFC3339)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(certValidity + time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(certValidity), DNSNames: []string{host},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	bundle := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if block, _ := pem.Decode(previousBundle); block != nil && block.Type == "CERTIFICATE" {
		bundle = append(bundle, pem.EncodeToMemory(block)...)
	}
	return map[string][]byte{
		"ca.crt":  bundle,
		"tls.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// ensureCABundle puts the CA bundle into the APIService, which config/ (or whoever installs
// kubenova) creates without one.
func (s *Server) ensureCABundle(ctx context.Context, bundle []byte) error {
	svc := &unstructured.Unstructured{}
	svc.SetAPIVersion("apiregistration.k8s.io/v1")
	svc.SetKind("APIService")
	if err := s.APIReader.Get(ctx, client.ObjectKey{Name: APIServiceName}, svc); err != nil {
		return fmt.Errorf("APIService %s: %w", APIServiceName, err)
	}
	current, _, _ := unstructured.NestedString(svc.Object, "spec", "caBundle")
	if current == base64.StdEncoding.EncodeToString(bundle) {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"caBundle": bundle}})
	if err != nil {
		return err
	}
	if err := s.Client.Patch(ctx, svc, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("the CA bundle of APIService %s: %w", APIServiceName, err)
	}
	log.FromContext(ctx).Info("published the serving certificate's CA in the APIService", "apiService", APIServiceName)
	return nil
}

// ensureWebhookCABundle puts the serving certificate's CA into the eviction webhook's
// configuration, where kube-apiserver reads it; a cluster without that configuration (kubenova
// installed without it) is left as it is.
func (s *Server) ensureWebhookCABundle(ctx context.Context, bundle []byte) error {
	cfg := &unstructured.Unstructured{}
	cfg.SetAPIVersion("admissionregistration.k8s.io/v1")
	cfg.SetKind("ValidatingWebhookConfiguration")
	if err := s.APIReader.Get(ctx, client.ObjectKey{Name: EvictionWebhookName}, cfg); apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("ValidatingWebhookConfiguration %s: %w", EvictionWebhookName, err)
	}
	webhooks, _, _ := unstructured.NestedSlice(cfg.Object, "webhooks")
	want := base64.StdEncoding.EncodeToString(bundle)
	changed := false
	for i, wh := range webhooks {
		m, ok := wh.(map[string]any)
		if !ok {
			continue
		}
		if current, _, _ := unstructured.NestedString(m, "clientConfig", "caBundle"); current != want {
			if err := unstructured.SetNestedField(m, want, "clientConfig", "caBundle"); err != nil {
				return err
			}
			webhooks[i], changed = m, true
		}
	}
	if !changed {
		return nil
	}
	if err := unstructured.SetNestedSlice(cfg.Object, webhooks, "webhooks"); err != nil {
		return err
	}
	if err := s.Client.Update(ctx, cfg); err != nil {
		return fmt.Errorf("the CA bundle of ValidatingWebhookConfiguration %s: %w", EvictionWebhookName, err)
	}
	log.FromContext(ctx).Info("published the serving certificate's CA in the eviction webhook", "webhook", EvictionWebhookName)
	return nil
}
