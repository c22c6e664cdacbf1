package v1alpha1_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsOnlyAPIMachinery keeps the API types importable without client-go or
// controller-runtime, as KubeVirt's kubevirt.io/api is: the state machine and other projects'
// clients import them.
func TestImportsOnlyAPIMachinery(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v: %s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %d packages: %s", len(deps), out)
	}
	for _, dep := range deps {
		for _, banned := range []string{"k8s.io/client-go/", "sigs.k8s.io/controller-runtime/", "k8s.io/api/"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("api/v1alpha1 imports %s", dep)
			}
		}
	}
}
