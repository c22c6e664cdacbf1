package utils

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// InstallAdmissionPolicies creates the ValidatingAdmissionPolicies and bindings of
// config/admission. The API server enforces them within moments; tests that depend on one
// wait for its first refusal. (Type-checking status comes from kube-controller-manager, which
// the test control plane does not run; the policy's own tests catch a broken expression.)
func InstallAdmissionPolicies(ctx context.Context, c client.Client, scheme *runtime.Scheme) error {
	files, err := filepath.Glob(filepath.Join(RepoRoot(), "config", "admission", "*.yaml"))
	if err != nil {
		return err
	}
	decoder := serializer.NewCodecFactory(scheme).UniversalDeserializer()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := docs.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			if err := c.Create(ctx, obj.(client.Object)); err != nil {
				return fmt.Errorf("%s: create: %w", f, err)
			}
		}
	}
	return nil
}

// GrantInstanceEditor lets user do anything with Instances in namespace, as a tenant with edit
// rights would, so that tests of the lock policy see its refusals rather than RBAC's.
func GrantInstanceEditor(ctx context.Context, c client.Client, namespace, user string) error {
	return GrantEditor(ctx, c, namespace, user, "instances")
}

// GrantEditor lets user do anything with the given kubenova resources in namespace.
func GrantEditor(ctx context.Context, c client.Client, namespace, user string, resources ...string) error {
	name := strings.Join(append([]string{"editor", user}, resources...), "-")
	if len(resources) == 1 && resources[0] == "instances" {
		name = "instance-editor-" + user
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"compute.kubenova.io"}, Resources: resources, Verbs: []string{"*"}}}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: "rbac.authorization.k8s.io", Name: user}}}
	for _, obj := range []client.Object{role, binding} {
		if err := client.IgnoreAlreadyExists(c.Create(ctx, obj)); err != nil {
			return err
		}
	}
	return nil
}
