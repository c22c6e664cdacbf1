package utils

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// withFrontProxy gives kube-apiserver what a cluster built by kubeadm has for aggregated APIs:
// a front-proxy CA, a client certificate of it (CN front-proxy-client) that kube-apiserver shows
// the API servers it proxies to, and the headers that carry the user. It publishes them in the
// ConfigMap kube-system/extension-apiserver-authentication. With aggregator routing it reaches
// an APIService's Service at its endpoints: there is no kube-proxy here.
func withFrontProxy(dir string) EnvOption {
	return func(env *envtest.Environment) error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		caPEM, clientPEM, keyPEM, err := frontProxyCertificates()
		if err != nil {
			return err
		}
		files := map[string][]byte{"ca.crt": caPEM, "client.crt": clientPEM, "client.key": keyPEM}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				return err
			}
		}
		env.ControlPlane.GetAPIServer().Configure().
			Set("requestheader-client-ca-file", filepath.Join(dir, "ca.crt")).
			Set("requestheader-allowed-names", "front-proxy-client").
			Set("requestheader-username-headers", "X-Remote-User").
			Set("requestheader-group-headers", "X-Remote-Group").
			Set("requestheader-extra-headers-prefix", "X-Remote-Extra-").
			Set("proxy-client-cert-file", filepath.Join(dir, "client.crt")).
			Set("proxy-client-key-file", filepath.Join(dir, "client.key")).
			Set("enable-aggregator-routing", "true")
		return nil
	}
}

// frontProxyCertificates makes the front-proxy CA and its client certificate.
func frontProxyCertificates() (caPEM, clientPEM, keyPEM []byte, err error) {
	ca, err := newTestCA("front-proxy-ca")
	if err != nil {
		return nil, nil, nil, err
	}
	clientPEM, keyPEM, err = ca.issue(certRequest{CommonName: "front-proxy-client", Usage: x509.ExtKeyUsageClientAuth})
	return ca.PEM, clientPEM, keyPEM, err
}

// SubresourcesService is the Service of the manager's aggregated API (config/manager).
const SubresourcesService = "kubenova-manager-subresources"

// routeAggregatedAPI registers the manager's aggregated API with kube-apiserver as config/
// does, the APIService itself from config/manager, and routes its Service to the manager at
// addr (host:port): a Service without a selector and an EndpointSlice, since the manager is no
// pod. The address must not be loopback, which an EndpointSlice may not hold; the hosts'
// bridge address serves.
func (c *Cluster) routeAggregatedAPI(ctx context.Context, addr string) error {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: SubresourcesService},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(int32(port))}}}}
	if err := client.IgnoreAlreadyExists(c.Client.Create(ctx, svc)); err != nil {
		return fmt.Errorf("service %s: %w", svc.Name, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: SubresourcesService,
			Labels: map[string]string{discoveryv1.LabelServiceName: SubresourcesService, discoveryv1.LabelManagedBy: "kubenova-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if err := client.IgnoreAlreadyExists(c.Client.Create(ctx, slice)); err != nil {
		return fmt.Errorf("endpointslice %s: %w", slice.Name, err)
	}
	objects, err := Render("manager")
	if err != nil {
		return err
	}
	for _, obj := range objects {
		if obj.GetKind() == "APIService" {
			return Apply(ctx, c.Client, append(objects[:0:0], obj), false)
		}
	}
	return fmt.Errorf("config/manager has no APIService")
}
