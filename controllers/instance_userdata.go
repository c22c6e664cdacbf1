package controllers

import (
	"bytes"
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// User data: the copy of the Secret spec.userData names that the manager keeps in kubenova's
// own namespace for the agent's config drive, made at launch, rebuild and unshelve and deleted
// with the instance. It is apart because it is the only part of the reconcile that reads and
// writes Secrets.

// userDataRetry is how often an instance waiting for its user data Secret looks again: the
// manager does not watch Secrets (it reads the one it needs, uncached).
const userDataRetry = 10 * time.Second

// copyUserData copies the user data that spec.userData names into the instance's own Secret in
// kubenova's namespace (v1.UserDataCopyName), which the agent reads when it makes the guest's
// config drive: agents read no Secret of the users' namespaces. It runs where a config drive is
// made from the spec as it is now (launch, rebuild, unshelve); moves keep the copy, as Nova
// keeps an instance's user_data. It says why the user data cannot be had yet, or nil.
func (r *InstanceReconciler) copyUserData(ctx context.Context, inst *v1.Instance) (*lifecycle.Refusal, error) {
	ud := inst.Spec.UserData
	if ud == nil || r.APIReader == nil {
		return nil, nil
	}
	key := ud.Key
	if key == "" {
		key = "userdata"
	}
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: ud.SecretName}, secret); apierrors.IsNotFound(err) {
		return &lifecycle.Refusal{Reason: v1.ReasonUserDataNotFound,
			Message: fmt.Sprintf("user data: secret %s does not exist in namespace %s", ud.SecretName, inst.Namespace)}, nil
	} else if err != nil {
		return nil, err
	}
	data, ok := secret.Data[key]
	if !ok {
		return &lifecycle.Refusal{Reason: v1.ReasonUserDataNotFound,
			Message: fmt.Sprintf("user data: secret %s has no key %q", ud.SecretName, key)}, nil
	}
	copied := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.systemNamespace(), Name: v1.UserDataCopyName(inst.UID),
		Labels:      map[string]string{v1.LabelInstanceUID: string(inst.UID)},
		Annotations: map[string]string{v1.AnnotationInstance: inst.Namespace + "/" + inst.Name}},
		Type: corev1.SecretTypeOpaque, Data: map[string][]byte{v1.UserDataCopyKey: data}}
	err := r.Create(ctx, copied)
	if !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	existing := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(copied), existing); err != nil {
		return nil, err
	}
	if bytes.Equal(existing.Data[v1.UserDataCopyKey], data) {
		return nil, nil
	}
	existing.Data = copied.Data
	return nil, r.Update(ctx, existing)
}

// ensureUserDataCopy makes the user data copy of an instance placed before the copies existed
// (placed by an older manager), once per run of the manager: a move makes the config drive
// anew from it on the new node.
func (r *InstanceReconciler) ensureUserDataCopy(ctx context.Context, inst *v1.Instance, _ *reconcileState) (*ctrl.Result, error) {
	if inst.Spec.UserData == nil || inst.Status.NodeName == "" || r.APIReader == nil {
		return nil, nil
	}
	if _, checked := r.userDataChecked.Load(inst.UID); checked {
		return nil, nil
	}
	key := types.NamespacedName{Namespace: r.systemNamespace(), Name: v1.UserDataCopyName(inst.UID)}
	if err := r.APIReader.Get(ctx, key, &corev1.Secret{}); apierrors.IsNotFound(err) {
		// A refusal (the user's Secret is gone) is no reason to hold the instance: it runs.
		if _, err := r.copyUserData(ctx, inst); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	r.userDataChecked.Store(inst.UID, true)
	return nil, nil
}

// deleteUserDataCopy deletes the instance's copy of its user data, once its domain is gone.
func (r *InstanceReconciler) deleteUserDataCopy(ctx context.Context, inst *v1.Instance) error {
	if inst.Spec.UserData == nil || r.APIReader == nil {
		return nil
	}
	copied := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.systemNamespace(), Name: v1.UserDataCopyName(inst.UID)}}
	return client.IgnoreNotFound(r.Delete(ctx, copied))
}

func (r *InstanceReconciler) systemNamespace() string {
	if r.SystemNamespace == "" {
		return v1.DefaultSystemNamespace
	}
	return r.SystemNamespace
}
