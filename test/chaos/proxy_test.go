package chaos

import (
	"io"
	"net"
	"sync"
)

// apiProxy stands between the processes and the API server: cut closes every connection
// through it and refuses new ones until mend, which is what an API server that went down, or
// a network between it and the nodes that broke, looks like to a client. The test's own
// client goes straight to the API server.
type apiProxy struct {
	upstream string
	ln       net.Listener

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
}

// startProxy listens on a free local port and forwards to upstream (host:port).
func startProxy(upstream string) (*apiProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &apiProxy{upstream: upstream, ln: ln, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p, nil
}

// addr is where the processes reach the API server.
func (p *apiProxy) addr() string { return p.ln.Addr().String() }

func (p *apiProxy) serve() {
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(conn) {
			_ = conn.Close()
			continue
		}
		go p.pipe(conn)
	}
}

// track remembers a connection, unless the proxy is cut.
func (p *apiProxy) track(conn net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	p.conns[conn] = struct{}{}
	return true
}

func (p *apiProxy) forget(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
		_ = c.Close()
	}
}

func (p *apiProxy) pipe(client net.Conn) {
	server, err := net.Dial("tcp", p.upstream)
	if err != nil || !p.track(server) {
		if server != nil {
			_ = server.Close()
		}
		p.forget(client)
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, client); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); done <- struct{}{} }()
	<-done
	p.forget(client, server)
}

// cut breaks every connection and refuses new ones.
func (p *apiProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// mend lets connections through again.
func (p *apiProxy) mend() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

func (p *apiProxy) close() { _ = p.ln.Close() }
