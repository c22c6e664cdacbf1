// Package consolelog holds what the manager and the node agents share to serve a guest's serial
// console log (Nova's console-log): the log file is on the instance's node, users ask the API
// server, the manager's aggregated API relays to the node's agent.
//
//	kubectl nova console-log ──> kube-apiserver ──(front proxy)──> manager ──(manager's token)──> agent
//
// The agent reads the file; the manager authenticates to it with a token of its own service
// account minted for that node alone (Audience), and trusts exactly the certificate the agent
// published in its Hypervisor.
package consolelog

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// The API users ask, which the manager serves (internal/subresources) and kube-apiserver
// proxies: GET /apis/APIGroup/APIVersion/namespaces/NS/instances/NAME/Subresource.
const (
	APIGroup   = "subresources.compute.kubenova.io"
	APIVersion = "v1alpha1"
	// Subresource is the console log's subresource of instances. kube-apiserver lets a request
	// for a subresource named "log" run as long as it streams (as kubectl logs -f does): any
	// other name is cut at its request timeout.
	Subresource = "log"
)

// AgentPath is the agent's path prefix: AgentPath + NAMESPACE/NAME.
const AgentPath = "/v1/console-log/"

// Audience is the audience of the tokens the manager shows node's agent: the API server
// accepts such a token only from a caller asking for that audience, so a node can replay it
// nowhere but to itself.
func Audience(node string) string { return "kubenova-agent:" + node }

// Options are a request's parameters, named as kubectl logs names its own.
type Options struct {
	// TailLines is how many of the last lines to send; negative sends the whole log.
	TailLines int64
	// Follow goes on sending what the guest prints.
	Follow bool
}

// ParseOptions reads the options of a query: tailLines (a number, whole log when absent) and
// follow (a boolean).
func ParseOptions(q url.Values) (Options, error) {
	o := Options{TailLines: -1}
	if t := q.Get("tailLines"); t != "" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil || n < 0 {
			return o, fmt.Errorf("tailLines must be a number of lines (0 or more), not %q", t)
		}
		o.TailLines = n
	}
	if f := q.Get("follow"); f != "" {
		b, err := strconv.ParseBool(f)
		if err != nil {
			return o, fmt.Errorf("follow must be true or false, not %q", f)
		}
		o.Follow = b
	}
	return o, nil
}

// Query is o as query parameters.
func (o Options) Query() url.Values {
	q := url.Values{}
	if o.TailLines >= 0 {
		q.Set("tailLines", strconv.FormatInt(o.TailLines, 10))
	}
	if o.Follow {
		q.Set("follow", "true")
	}
	return q
}

// tailChunk is how much of the file is read at a time, from its end, to find its last lines.
const tailChunk = 32 << 10

// WriteTail writes the log's last n lines (all of it when n < 0) and returns the position it
// wrote up to. Only the part written is read: the file is read backwards from its end until n
// line ends are found. A missing log is empty: the guest has printed nothing yet.
func WriteTail(w io.Writer, path string, n int64) (Position, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return Position{}, nil
	}
	if err != nil {
		return Position{}, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return Position{}, err
	}
	end := st.Size()
	start := int64(0)
	if n >= 0 {
		if start, err = tailStart(f, end, n); err != nil {
			return Position{}, err
		}
	}
	_, err = io.Copy(w, io.NewSectionReader(f, start, end-start))
	return Position{Offset: end, File: st}, err
}

// tailStart is the offset where the last n lines of the file's first end bytes begin. A last
// line without its line end counts as a line.
func tailStart(f io.ReaderAt, end, n int64) (int64, error) {
	if n == 0 {
		return end, nil
	}
	buf := make([]byte, tailChunk)
	pos := end
	// The line end of the last line does not start another one.
	skipLast := true
	for pos > 0 {
		size := min(int64(len(buf)), pos)
		pos -= size
		chunk := buf[:size]
		if _, err := f.ReadAt(chunk, pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] != '\n' {
				continue
			}
			if skipLast && pos+int64(i) == end-1 {
				continue
			}
			if n--; n == 0 {
				return pos + int64(i) + 1, nil
			}
		}
		skipLast = false
	}
	return 0, nil
}

// Position is how far a reader has written a log: the offset in the file it read.
type Position struct {
	Offset int64
	// File is the file read (nil before one existed).
	File os.FileInfo
}

// CopyFrom writes the file's bytes past pos and returns the new position. Another file at the
// path, or one that shrank, is a new log: it is written from its start.
func CopyFrom(w io.Writer, path string, pos Position) (Position, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return pos, nil
	}
	if err != nil {
		return pos, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return pos, err
	}
	offset := pos.Offset
	if pos.File == nil || !os.SameFile(pos.File, st) || st.Size() < offset {
		offset = 0
	}
	n, err := io.Copy(w, io.NewSectionReader(f, offset, st.Size()-offset))
	return Position{Offset: offset + n, File: st}, err
}

// AgentClient calls the agents' console-log services: it trusts exactly the certificate whose
// digest each agent published, and follows no redirect (a redirect would carry the token
// elsewhere). Each call has a connection of its own, closed with the body: a pin is per
// agent, and a followed log holds its connection for as long as it runs anyway.
type AgentClient struct{}

// agentHeaderTimeout bounds the wait for an agent's answer; an agent sends its headers at once,
// before any of the log.
const agentHeaderTimeout = 30 * time.Second

// Get asks the agent at service for the console log of namespace/name with a token minted
// for that agent's node. The caller closes the body.
func (c *AgentClient) Get(ctx context.Context, service *v1.ConsoleLogService, token, namespace, name string, o Options) (io.ReadCloser, error) {
	base, err := url.Parse(service.URL)
	if err != nil || base.Scheme != "https" || base.Host == "" || (base.Path != "" && base.Path != "/") {
		return nil, fmt.Errorf("the agent's console-log service %q is not an https://host:port URL", service.URL)
	}
	pin, err := hex.DecodeString(service.CertificateSHA256)
	if err != nil || len(pin) != sha256.Size {
		return nil, fmt.Errorf("the agent's certificate digest %q is not a SHA-256 in hex", service.CertificateSHA256)
	}
	target := base.JoinPath(AgentPath, namespace, name)
	target.RawQuery = o.Query().Encode()
	transport := &http.Transport{
		Proxy:                 nil, // straight to the node: the token is for it alone
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: agentHeaderTimeout,
		DisableKeepAlives:     true,
	}
	transport.TLSClientConfig = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified below by its digest, not by a CA: the agent's certificate is its own.
		InsecureSkipVerify: true, //nolint:gosec // pinned in VerifyPeerCertificate
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			if len(rawCerts) == 0 {
				return errors.New("the agent showed no certificate")
			}
			if sum := sha256.Sum256(rawCerts[0]); !strings.EqualFold(hex.EncodeToString(sum[:]), service.CertificateSHA256) {
				return fmt.Errorf("the agent's certificate (sha256 %x) is not the one its Hypervisor publishes", sum)
			}
			return nil
		},
	}
	hc := &http.Client{Transport: transport, CheckRedirect: func(*http.Request, []*http.Request) error {
		return errors.New("the agent's console-log service redirected: refused")
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, &AgentError{Code: resp.StatusCode, Message: strings.TrimSpace(string(b))}
	}
	return resp.Body, nil
}

// AgentError is an agent's refusal.
type AgentError struct {
	Code    int
	Message string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("the agent answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// ServeTLS serves handler over TLS at addr until ctx ends; the requests' contexts end with it,
// so that followed logs stop. Both ends of the relay, the manager's and the agents', serve
// this way.
func ServeTLS(ctx context.Context, addr string, handler http.Handler, config *tls.Config, listening func()) error {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		BaseContext: func(net.Listener) context.Context { return ctx }, TLSConfig: config}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if listening != nil {
		listening()
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ServeTLS(l, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
