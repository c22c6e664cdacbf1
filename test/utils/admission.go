package utils

import (
	"context"
	"fmt"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// InstallAdmissionPolicies creates the admission policies and bindings of config/admission,
// rendered by its kustomization. The API server enforces them within moments; tests that
// depend on one wait for its first refusal. (Type-checking status comes from
// kube-controller-manager's admission policy controller, which the test control plane does not
// run; the policies' own tests catch a broken expression.)
func InstallAdmissionPolicies(ctx context.Context, c client.Client) error {
	objects, err := Render("admission")
	if err != nil {
		return err
	}
	for _, obj := range objects {
		if err := c.Create(ctx, obj); err != nil {
			return fmt.Errorf("create %s %s: %w", obj.GetKind(), obj.GetName(), err)
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
