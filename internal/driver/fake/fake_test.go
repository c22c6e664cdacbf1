package fake

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

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

// A hung call returns when its caller gives up, and not before.
func TestHungCallsEndWithTheirContext(t *testing.T) {
	d := New()
	d.SetHang("Destroy", true)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := d.Destroy(ctx, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung Destroy returned %v", err)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Errorf("hung Destroy returned after %s, before its deadline", waited)
	}
	d.SetHang("Destroy", false)
	if err := d.Destroy(context.Background(), "x"); err != nil {
		t.Errorf("healed Destroy: %v", err)
	}
}
