package utils

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
)

// setUpMigrationTLS does for each node what the README's "Live migration" asks of a production
// node, so that the DaemonSet's --migration-uri=qemu+tls://$(NODE_IP)/system and --migration-tls
// work as shipped: one CA for the cluster's nodes; on each node libvirt's certificates in
// /etc/pki/CA and /etc/pki/libvirt (the server's names the node's address, which the source's
// libvirtd checks) and QEMU's in /etc/pki/qemu, readable by libvirt-qemu; libvirtd listening
// with TLS on the node's address. hack/libvirt-hosts.sh reads them from DIR/<host>/tls at the
// host's start; each host is restarted here (no guest runs yet).
func (c *Cluster) setUpMigrationTLS(ctx context.Context) error {
	ca, err := newTestCA("kubenova test nodes' migration CA")
	if err != nil {
		return err
	}
	qemuGroup, err := user.LookupGroup("libvirt-qemu")
	if err != nil {
		return fmt.Errorf("QEMU's group (hack/install-libvirt.sh installs it): %w", err)
	}
	gid, err := strconv.Atoi(qemuGroup.Gid)
	if err != nil {
		return err
	}
	hostsDir := filepath.Join(c.WorkDir, "hosts")
	for _, node := range c.Nodes {
		tls := filepath.Join(hostsDir, node.Name, "tls")
		pki := filepath.Join(tls, "pki")
		server, serverKey, err := ca.issue(certRequest{CommonName: node.Name, Usage: x509.ExtKeyUsageServerAuth,
			DNSNames: []string{node.Name}, IPs: []net.IP{net.ParseIP(node.IP)}})
		if err != nil {
			return err
		}
		client, clientKey, err := ca.issue(certRequest{CommonName: node.Name, Usage: x509.ExtKeyUsageClientAuth})
		if err != nil {
			return err
		}
		// libvirtd reads its files as root; QEMU, as libvirt-qemu, reads its own.
		files := []struct {
			path  string
			data  []byte
			mode  os.FileMode
			group int
		}{
			{"CA/cacert.pem", ca.PEM, 0o644, 0},
			{"libvirt/servercert.pem", server, 0o644, 0},
			{"libvirt/private/serverkey.pem", serverKey, 0o600, 0},
			{"libvirt/clientcert.pem", client, 0o644, 0},
			{"libvirt/private/clientkey.pem", clientKey, 0o600, 0},
			{"qemu/ca-cert.pem", ca.PEM, 0o644, gid},
			{"qemu/server-cert.pem", server, 0o644, gid},
			{"qemu/server-key.pem", serverKey, 0o640, gid},
			{"qemu/client-cert.pem", client, 0o644, gid},
			{"qemu/client-key.pem", clientKey, 0o640, gid},
		}
		for _, f := range files {
			path := filepath.Join(pki, f.path)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(path, f.data, f.mode); err != nil {
				return err
			}
			if err := os.Chown(path, 0, f.group); err != nil {
				return err
			}
			if err := os.Chmod(path, f.mode); err != nil { // whatever the umask took away
				return err
			}
		}
		if err := os.Chmod(filepath.Join(pki, "libvirt", "private"), 0o700); err != nil {
			return err
		}
		if err := os.Chown(filepath.Join(pki, "qemu"), 0, gid); err != nil {
			return err
		}
		if err := os.Chmod(filepath.Join(pki, "qemu"), 0o750); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tls, "address"), []byte(node.IP+"\n"), 0o644); err != nil {
			return err
		}
		out, err := exec.CommandContext(ctx, filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh"),
			"restart-daemon", hostsDir, node.Name).CombinedOutput()
		if err != nil {
			return fmt.Errorf("restart %s's libvirtd with TLS: %w: %s", node.Name, err, out)
		}
	}
	return nil
}
