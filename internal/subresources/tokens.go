package subresources

import (
	"context"
	"fmt"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kubenova/kubenova/internal/consolelog"
)

// agentTokenLifetime is how long a token shown to agents lives; one is used until a fifth of
// its life is left.
const agentTokenLifetime = time.Hour

// agentTokens mints and keeps tokens of the manager's own service account, one per node, each
// with that node's audience (consolelog.Audience): what one node sees is worth nothing
// anywhere else. The manager learns which service account it is from the API server
// (SelfSubjectReview), so a manager that runs as anything else fails here with a clear error.
type agentTokens struct {
	clientset kubernetes.Interface

	// mu guards the fields below; the API calls run outside it, so that a slow one holds up
	// no other node's requests (two at once for one node may both mint: harmless).
	mu      sync.Mutex
	account [2]string // namespace, name
	byNode  map[string]authenticationv1.TokenRequestStatus
}

// For is a token for node's agent.
func (t *agentTokens) For(ctx context.Context, node string) (string, error) {
	t.mu.Lock()
	tok, ok := t.byNode[node]
	account := t.account
	t.mu.Unlock()
	if ok && time.Until(tok.ExpirationTimestamp.Time) > agentTokenLifetime/5 {
		return tok.Token, nil
	}
	if account[1] == "" {
		review, err := t.clientset.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			return "", fmt.Errorf("who the manager is (SelfSubjectReview): %w", err)
		}
		name := review.Status.UserInfo.Username
		ns, sa, err := serviceaccount.SplitUsername(name)
		if err != nil {
			return "", fmt.Errorf("the manager runs as %s, not a service account: it has no token to show the agents", name)
		}
		account = [2]string{ns, sa}
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{consolelog.Audience(node)}, ExpirationSeconds: ptr.To(int64(agentTokenLifetime / time.Second))}}
	resp, err := t.clientset.CoreV1().ServiceAccounts(account[0]).CreateToken(ctx, account[1], req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("a token of %s/%s for node %s: %w", account[0], account[1], node, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.account = account
	if t.byNode == nil {
		t.byNode = map[string]authenticationv1.TokenRequestStatus{}
	}
	t.byNode[node] = resp.Status
	return resp.Status.Token, nil
}
