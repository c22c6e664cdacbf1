// Package gitops reads kubenova's objects the way GitOps tools do: Argo CD through the health
// scripts that config/argocd ships, Flux (and kubectl wait, and Argo CD's kstatus-minded
// users) through kstatus.
package gitops

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	kubenovascheme "github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/test/utils"
)

var scheme = kubenovascheme.New()

// ArgoHealth is what Argo CD shows for an object.
type ArgoHealth struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// Argo CD's health statuses.
const (
	Healthy     = "Healthy"
	Progressing = "Progressing"
	Degraded    = "Degraded"
	Suspended   = "Suspended"
)

// HealthScripts are the scripts config/argocd puts into argocd-cm, by kind.
type HealthScripts map[string]string

// LoadHealthScripts renders config/argocd as Argo CD's users apply it and takes the scripts
// from the ConfigMap's keys, resource.customizations.health.<group>_<Kind>.
func LoadHealthScripts() (HealthScripts, error) {
	objects, err := utils.Render("argocd")
	if err != nil {
		return nil, err
	}
	prefix := "resource.customizations.health." + v1.GroupVersion.Group + "_"
	scripts := HealthScripts{}
	for _, o := range objects {
		if o.GetKind() != "ConfigMap" || o.GetName() != "argocd-cm" {
			continue
		}
		data, _, err := unstructured.NestedStringMap(o.Object, "data")
		if err != nil {
			return nil, err
		}
		for key, script := range data {
			if kind, ok := strings.CutPrefix(key, prefix); ok {
				scripts[kind] = script
			}
		}
	}
	if len(scripts) == 0 {
		return nil, fmt.Errorf("config/argocd renders no health script for %s", v1.GroupVersion.Group)
	}
	return scripts, nil
}

// Of runs the kind's script on the object as Argo CD does: the object as the global obj, only
// the base, table and package libraries open, a second at most, a table returned.
func (s HealthScripts) Of(obj runtime.Object) (ArgoHealth, error) {
	u, err := toUnstructured(obj)
	if err != nil {
		return ArgoHealth{}, err
	}
	script, ok := s[u.GetKind()]
	if !ok {
		return ArgoHealth{}, fmt.Errorf("no Argo CD health script for kind %q", u.GetKind())
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for name, open := range map[string]lua.LGFunction{lua.BaseLibName: lua.OpenBase, lua.TabLibName: lua.OpenTable, lua.LoadLibName: lua.OpenPackage} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(open), Protect: true}, lua.LString(name)); err != nil {
			return ArgoHealth{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, u.Object))
	if err := l.DoString(script); err != nil {
		return ArgoHealth{}, fmt.Errorf("the %s health script: %w", u.GetKind(), err)
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return ArgoHealth{}, fmt.Errorf("the %s health script returned %s, not a table", u.GetKind(), l.Get(-1).Type())
	}
	h := ArgoHealth{Status: lua.LVAsString(table.RawGetString("status")), Message: lua.LVAsString(table.RawGetString("message"))}
	switch h.Status {
	case Healthy, Progressing, Degraded, Suspended:
		return h, nil
	}
	return h, fmt.Errorf("the %s health script returned status %q, which Argo CD reads as Unknown", u.GetKind(), h.Status)
}

// toLua converts an unstructured object's values into Lua's, as Argo CD does: maps and lists
// become tables (lists from index 1), numbers LNumber.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetString(key, toLua(l, item))
		}
		return t
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case json.Number:
		return lua.LString(v)
	}
	return lua.LNil
}

// Kstatus is kstatus's verdict on the object, the one Flux's health checks and kubectl wait
// --for=condition use.
func Kstatus(obj runtime.Object) (*status.Result, error) {
	u, err := toUnstructured(obj)
	if err != nil {
		return nil, err
	}
	return status.Compute(u)
}

// toUnstructured converts a typed object, with its kind set from the scheme's group.
func toUnstructured(obj runtime.Object) (*unstructured.Unstructured, error) {
	if u, ok := obj.(*unstructured.Unstructured); ok {
		return u, nil
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	if u.GetKind() == "" {
		gvks, _, err := scheme.ObjectKinds(obj)
		if err != nil {
			return nil, err
		}
		u.SetGroupVersionKind(gvks[0])
	}
	return u, nil
}
