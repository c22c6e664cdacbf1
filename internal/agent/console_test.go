package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/consolelog"
	"github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/storage"
)

// streamRecorder is a ResponseWriter that a test may read while the handler writes.
type streamRecorder struct {
	mu      sync.Mutex
	body    bytes.Buffer
	flushes int
}

func (r *streamRecorder) Header() http.Header { return http.Header{} }
func (r *streamRecorder) WriteHeader(int)     {}
func (r *streamRecorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.body.Write(b)
}
func (r *streamRecorder) Flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushes++
}
func (r *streamRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.body.String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition; there is nothing to wait on
	}
}

// TestFollowEndsWhenTheInstanceLeaves follows a log while the guest prints, then moves the
// instance to another node, then deletes it: each ends the stream.
func TestFollowEndsWhenTheInstanceLeaves(t *testing.T) {
	for name, leave := range map[string]func(context.Context, client.Client, *v1.Instance) error{
		"moved": func(ctx context.Context, c client.Client, inst *v1.Instance) error {
			inst.Status.NodeName = "node-2"
			return c.Update(ctx, inst)
		},
		"deleted": func(ctx context.Context, c client.Client, inst *v1.Instance) error { return c.Delete(ctx, inst) },
	} {
		t.Run(name, func(t *testing.T) {
			uid := "00000000-0000-0000-0000-000000000001"
			inst := instance(uid, thisNodeName)
			c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(inst).Build()
			store := &storage.Node{Root: t.TempDir()}
			path, _ := store.ConsoleLog(uid)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte("booted\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			s := &ConsoleServer{NodeName: thisNodeName, Reader: c, Storage: store, FollowPoll: 10 * time.Millisecond}
			key := types.NamespacedName{Namespace: inst.Namespace, Name: inst.Name}
			out := &streamRecorder{}
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.follow(context.Background(), out, key, inst.UID, path, consolelog.Position{Offset: st.Size(), File: st})
			}()
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = f.WriteString("alive seq=1\n")
			_ = f.Close()
			eventually(t, "the new line followed", func() bool { return out.String() == "alive seq=1\n" })
			select {
			case <-done:
				t.Fatal("the stream ended while the instance is on the node")
			default:
			}
			if err := c.Get(context.Background(), key, inst); err != nil {
				t.Fatal(err)
			}
			if err := leave(context.Background(), c, inst); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the stream goes on after the instance left the node")
			}
		})
	}
}

func TestConsoleCertificateIsKept(t *testing.T) {
	dir := t.TempDir()
	first := &ConsoleServer{Addr: "127.0.0.1:8445", AdvertiseHost: "127.0.0.1", NodeName: "n", StateDir: filepath.Join(dir, "_agents", "n")}
	if err := first.Prepare(); err != nil {
		t.Fatal(err)
	}
	published := first.Published()
	sum := sha256.Sum256(first.cert.Certificate[0])
	if published.URL != "https://127.0.0.1:8445" || published.CertificateSHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("published %+v", published)
	}
	restarted := &ConsoleServer{Addr: first.Addr, AdvertiseHost: first.AdvertiseHost, NodeName: "n", StateDir: first.StateDir}
	if err := restarted.Prepare(); err != nil {
		t.Fatal(err)
	}
	if *restarted.Published() != *published {
		t.Fatalf("a restart changed the published certificate: %+v, was %+v", restarted.Published(), published)
	}
	// A new address needs a certificate that names it.
	moved := &ConsoleServer{Addr: "10.0.0.5:8445", AdvertiseHost: "10.0.0.5", NodeName: "n", StateDir: first.StateDir}
	if err := moved.Prepare(); err != nil {
		t.Fatal(err)
	}
	if moved.Published().CertificateSHA256 == published.CertificateSHA256 || !strings.HasPrefix(moved.Published().URL, "https://10.0.0.5:") {
		t.Fatalf("a new address kept the old certificate: %+v", moved.Published())
	}
	if st, err := os.Stat(filepath.Join(first.StateDir, "console-tls.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the key's file: %v, %v", st, err)
	}
}
