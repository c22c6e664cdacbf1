package consolelog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func writeLog(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWriteTail(t *testing.T) {
	// Lines longer than a chunk, and more of them than one chunk holds, so that the backwards
	// read crosses chunk boundaries inside lines and between them.
	long := strings.Repeat("x", tailChunk+10)
	var many strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&many, "line %d\n", i)
	}
	cases := []struct {
		name, content string
		n             int64
		want          string
	}{
		{"all", "a\nb\nc\n", -1, "a\nb\nc\n"},
		{"none", "a\nb\nc\n", 0, ""},
		{"last two", "a\nb\nc\n", 2, "b\nc\n"},
		{"more than there are", "a\nb\n", 5, "a\nb\n"},
		{"an unfinished last line counts", "a\nb\nc", 2, "b\nc"},
		{"empty lines count", "a\n\n\n", 2, "\n\n"},
		{"empty file", "", 3, ""},
		{"long lines", "first\n" + long + "\n" + long + "\n", 1, long + "\n"},
		{"long lines, two", "first\n" + long + "\n" + long + "\n", 2, long + "\n" + long + "\n"},
		{"many lines", many.String(), 3, "line 9997\nline 9998\nline 9999\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLog(t, tc.content)
			var out bytes.Buffer
			end, err := WriteTail(&out, path, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("WriteTail(%d) wrote %q, want %q", tc.n, out.String(), tc.want)
			}
			if end.Offset != int64(len(tc.content)) {
				t.Errorf("end = %d, want %d", end.Offset, len(tc.content))
			}
		})
	}
}

func TestWriteTailOfMissingLog(t *testing.T) {
	var out bytes.Buffer
	end, err := WriteTail(&out, filepath.Join(t.TempDir(), "console.log"), 10)
	if err != nil || end.Offset != 0 || end.File != nil || out.Len() != 0 {
		t.Fatalf("a log not yet written: end %+v, %q, %v; want nothing", end, out.String(), err)
	}
}

func TestCopyFrom(t *testing.T) {
	path := writeLog(t, "old\n")
	var out bytes.Buffer
	end, err := WriteTail(&out, path, 0)
	if err != nil || end.Offset != 4 || out.Len() != 0 {
		t.Fatalf("--tail 0: end %+v, %q, %v", end, out.String(), err)
	}
	if end, err = CopyFrom(&out, path, end); err != nil || end.Offset != 4 || out.Len() != 0 {
		t.Fatalf("nothing new: end %+v, %q, %v", end, out.String(), err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("new\n")
	_ = f.Close()
	if end, err = CopyFrom(&out, path, end); err != nil || end.Offset != 8 || out.String() != "new\n" {
		t.Fatalf("appended: end %+v, %q, %v", end, out.String(), err)
	}
	// A log that shrank is read from its start.
	if err := os.WriteFile(path, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if end, err = CopyFrom(&out, path, end); err != nil || end.Offset != 2 || out.String() != "x\n" {
		t.Fatalf("shrunk: end %+v, %q, %v", end, out.String(), err)
	}
	// So is another file at the path, however long.
	replacement := filepath.Join(filepath.Dir(path), "replacement")
	if err := os.WriteFile(replacement, []byte("first\nsecond\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(replacement, path); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if end, err = CopyFrom(&out, path, end); err != nil || end.Offset != 13 || out.String() != "first\nsecond\n" {
		t.Fatalf("replaced: end %+v, %q, %v", end, out.String(), err)
	}
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		query   string
		want    Options
		wantErr bool
	}{
		{"", Options{TailLines: -1}, false},
		{"tailLines=5&follow=true", Options{TailLines: 5, Follow: true}, false},
		{"tailLines=0", Options{TailLines: 0}, false},
		{"tailLines=-2", Options{}, true},
		{"tailLines=ten", Options{}, true},
		{"follow=maybe", Options{}, true},
	} {
		q, _ := url.ParseQuery(tc.query)
		got, err := ParseOptions(q)
		if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
			t.Errorf("ParseOptions(%q) = %+v, %v; want %+v (error %t)", tc.query, got, err, tc.want, tc.wantErr)
		}
		if !tc.wantErr {
			if back, err := ParseOptions(got.Query()); err != nil || back != got {
				t.Errorf("%+v does not survive its query: %+v, %v", got, back, err)
			}
		}
	}
}

// agent is a TLS server playing an agent's console-log service, and what it publishes.
func agent(t *testing.T, handler http.HandlerFunc) *v1.ConsoleLogService {
	t.Helper()
	srv := httptest.NewTLSServer(handler)
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(srv.Certificate().Raw)
	return &v1.ConsoleLogService{URL: srv.URL, CertificateSHA256: hex.EncodeToString(sum[:])}
}

func TestAgentClient(t *testing.T) {
	var asked *http.Request
	published := agent(t, func(w http.ResponseWriter, req *http.Request) {
		asked = req
		_, _ = io.WriteString(w, "hello\n")
	})
	c := &AgentClient{}
	ctx := context.Background()
	body, err := c.Get(ctx, published, "tok", "ns", "web", Options{TailLines: 3, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(body)
	_ = body.Close()
	if string(b) != "hello\n" {
		t.Errorf("body %q", b)
	}
	if asked.URL.Path != AgentPath+"ns/web" || asked.URL.Query().Get("tailLines") != "3" || asked.URL.Query().Get("follow") != "true" {
		t.Errorf("asked %s", asked.URL)
	}
	if got := asked.Header.Get("Authorization"); got != "Bearer tok" {
		t.Errorf("Authorization %q", got)
	}

	t.Run("another certificate", func(t *testing.T) {
		forged := *published
		forged.CertificateSHA256 = strings.Repeat("ab", 32)
		if _, err := c.Get(ctx, &forged, "tok", "ns", "web", Options{}); err == nil || !strings.Contains(err.Error(), "is not the one") {
			t.Fatalf("a certificate other than the published one: %v", err)
		}
	})
	t.Run("not https", func(t *testing.T) {
		plain := *published
		plain.URL = strings.Replace(plain.URL, "https://", "http://", 1)
		if _, err := c.Get(ctx, &plain, "tok", "ns", "web", Options{}); err == nil || !strings.Contains(err.Error(), "not an https://") {
			t.Fatalf("http: %v", err)
		}
	})
	t.Run("redirect", func(t *testing.T) {
		// To the same server, whose certificate is the pinned one: only the refusal to follow
		// keeps the token from the redirect's target.
		tokenSeen := false
		var redirecting *v1.ConsoleLogService
		redirecting = agent(t, func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path == "/steal" {
				tokenSeen = true
				return
			}
			http.Redirect(w, req, redirecting.URL+"/steal", http.StatusFound)
		})
		if _, err := c.Get(ctx, redirecting, "tok", "ns", "web", Options{}); err == nil || !strings.Contains(err.Error(), "redirected") {
			t.Fatalf("redirect: %v", err)
		}
		if tokenSeen {
			t.Fatal("the redirect was followed")
		}
	})
	t.Run("refusal", func(t *testing.T) {
		refusing := agent(t, func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no instance", http.StatusNotFound) })
		_, err := c.Get(ctx, refusing, "tok", "ns", "web", Options{})
		var refused *AgentError
		if !errors.As(err, &refused) || refused.Code != http.StatusNotFound || refused.Message != "no instance" {
			t.Fatalf("refusal: %v", err)
		}
	})
}

// BenchmarkTail measures --tail 20 of a 64 MiB log (a guest that has run for long): WriteTail
// reads the file backwards from its end; the baseline reads the whole file and cuts its last
// lines, as the first, withdrawn version did. Run with
// `go test ./internal/consolelog -run - -bench Tail -benchmem`.
func BenchmarkTail(b *testing.B) {
	path := filepath.Join(b.TempDir(), "console.log")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	line := []byte("kubenova-test-guest: alive seq=123456 uptime=98765.43 load=0.00 0.00 0.00\n")
	for written := 0; written < 64<<20; written += len(line) {
		if _, err := f.Write(line); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	b.Run("WriteTail", func(b *testing.B) {
		for b.Loop() {
			if _, err := WriteTail(io.Discard, path, 20); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline: read the whole file", func(b *testing.B) {
		for b.Loop() {
			whole, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			end := len(whole) - 1
			for n := 0; n < 20 && end > 0; n++ {
				end = bytes.LastIndexByte(whole[:end], '\n')
			}
			if _, err := io.Discard.Write(whole[end+1:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// ServeTLS says when its listener is open: a connection made at that moment is accepted (the
// manager's readiness waits for it).
func TestServeTLSSaysWhenItListens(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialed := make(chan error, 1)
	served := make(chan error, 1)
	go func() {
		served <- ServeTLS(ctx, addr, http.NotFoundHandler(), &tls.Config{MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, errors.New("no handshake here") }}, func() {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				_ = c.Close()
			}
			dialed <- err
		})
	}()
	select {
	case err := <-dialed:
		if err != nil {
			t.Fatalf("a connection when ServeTLS said it listens: %v", err)
		}
	case err := <-served:
		t.Fatalf("ServeTLS returned before it listened: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("ServeTLS never said it listens")
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("ServeTLS after its context ended: %v", err)
	}
}
