package fake

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/kubenova/kubenova/internal/driver"
)

// Every call of driver.Driver that talks to the hypervisor can be made to fail, and heals.
func TestEveryMethodFailsWhenTold(t *testing.T) {
	iface := reflect.TypeFor[driver.Driver]()
	for i := range iface.NumMethod() {
		method := iface.Method(i)
		if method.Name == "Events" || method.Name == "Close" {
			continue // no call to the hypervisor
		}
		t.Run(method.Name, func(t *testing.T) {
			d := New()
			fn := reflect.ValueOf(d).MethodByName(method.Name)
			args := make([]reflect.Value, fn.Type().NumIn())
			for j := range args {
				args[j] = reflect.Zero(fn.Type().In(j))
			}
			args[0] = reflect.ValueOf(context.Background())
			injected := errors.New("libvirtd said no")
			d.SetFail(method.Name, injected)
			out := fn.Call(args)
			if err, _ := out[len(out)-1].Interface().(error); !errors.Is(err, injected) {
				t.Errorf("%s returned %v, want the injected error", method.Name, err)
			}
			if d.CallCount(method.Name) != 1 {
				t.Errorf("%s counted %d calls, want 1", method.Name, d.CallCount(method.Name))
			}
			d.SetFail(method.Name, nil)
			out = fn.Call(args)
			if err, _ := out[len(out)-1].Interface().(error); errors.Is(err, injected) {
				t.Errorf("%s still fails after SetFail(nil)", method.Name)
			}
		})
	}
}
