package subresources

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/request/headerrequest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// frontProxyConfig is how kube-apiserver proxies requests to aggregated APIs: the CA of its
// client certificate, the names that certificate may carry, and the headers that name the user.
// kube-apiserver publishes it in the ConfigMap kube-system/extension-apiserver-authentication
// (its --requestheader-* flags), which the built-in Role extension-apiserver-authentication-reader
// lets the manager read.
type frontProxyConfig struct {
	verify                                                             x509.VerifyOptions
	allowedNames, userHeaders, uidHeaders, groupHeaders, extraPrefixes []string
}

// extensionAuthConfigMap is where kube-apiserver publishes its authentication settings.
var extensionAuthConfigMap = client.ObjectKey{Namespace: metav1.NamespaceSystem, Name: "extension-apiserver-authentication"}

func readFrontProxyConfig(ctx context.Context, r client.Reader) (*frontProxyConfig, error) {
	cm := &corev1.ConfigMap{}
	if err := r.Get(ctx, extensionAuthConfigMap, cm); err != nil {
		return nil, fmt.Errorf("kube-apiserver's front-proxy settings (ConfigMap %s): %w", extensionAuthConfigMap, err)
	}
	return parseFrontProxyConfig(cm.Data)
}

func parseFrontProxyConfig(data map[string]string) (*frontProxyConfig, error) {
	caPEM := data["requestheader-client-ca-file"]
	if caPEM == "" {
		return nil, errors.New("kube-apiserver has no front proxy (its --requestheader-client-ca-file): it cannot serve aggregated APIs")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("the front proxy's CA (requestheader-client-ca-file) holds no certificate")
	}
	fp := &frontProxyConfig{verify: x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}}
	for key, into := range map[string]*[]string{
		"requestheader-allowed-names":        &fp.allowedNames,
		"requestheader-username-headers":     &fp.userHeaders,
		"requestheader-uid-headers":          &fp.uidHeaders,
		"requestheader-group-headers":        &fp.groupHeaders,
		"requestheader-extra-headers-prefix": &fp.extraPrefixes,
	} {
		if v := data[key]; v != "" {
			if err := json.Unmarshal([]byte(v), into); err != nil {
				return nil, fmt.Errorf("%s of ConfigMap %s: %w", key, extensionAuthConfigMap, err)
			}
		}
	}
	if len(fp.userHeaders) == 0 {
		return nil, errors.New("kube-apiserver names no header for the user (its --requestheader-username-headers)")
	}
	return fp, nil
}

// frontProxyAuthenticator accepts requests that carry a client certificate of the front
// proxy's CA (with an allowed name, when kube-apiserver lists any) and reads the user from the
// headers, whatever the latest settings read are.
func (s *Server) frontProxyAuthenticator() authenticator.Request {
	current := func(pick func(*frontProxyConfig) []string) headerrequest.StringSliceProvider {
		return headerrequest.StringSliceProviderFunc(func() []string { return pick(s.frontProxy.Load()) })
	}
	return headerrequest.NewDynamicVerifyOptionsSecure(
		func() (x509.VerifyOptions, bool) { return s.frontProxy.Load().verify, true },
		current(func(fp *frontProxyConfig) []string { return fp.allowedNames }),
		current(func(fp *frontProxyConfig) []string { return fp.userHeaders }),
		current(func(fp *frontProxyConfig) []string { return fp.uidHeaders }),
		current(func(fp *frontProxyConfig) []string { return fp.groupHeaders }),
		current(func(fp *frontProxyConfig) []string { return fp.extraPrefixes }))
}
