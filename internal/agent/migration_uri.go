package agent

import (
	"net"
	"strings"
)

// BracketIPv6Host puts an IPv6 literal host of a libvirt URI in brackets, as URIs need:
// config/agent builds --migration-uri from the node's address (qemu+tls://$(NODE_IP)/system),
// and an IPv6 node's address would otherwise read as a host with a port. Any other URI is
// returned as it is.
func BracketIPv6Host(uri string) string {
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return uri
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	userinfo := ""
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		userinfo, authority = authority[:at+1], authority[at+1:]
	}
	if ip := net.ParseIP(authority); ip == nil || ip.To4() != nil {
		return uri
	}
	return scheme + "://" + userinfo + "[" + authority + "]" + rest[end:]
}
