package driver_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/fake"
)

// TestInstrumentHearsEveryCall: every call is observed with its method; a failure counts as
// one, a domain that is not there does not.
func TestInstrumentHearsEveryCall(t *testing.T) {
	ctx := context.Background()
	type call struct {
		method string
		failed bool
	}
	var heard []call
	d := driver.Instrument(fake.New(), func(method string, _ time.Duration, failed bool) {
		heard = append(heard, call{method, failed})
	})
	const uid = "0b7e7c2e-5d2f-4b8e-9a51-7f0e3d2c1b01"
	if err := d.Spawn(ctx, driver.Machine{UUID: uid, Name: "kubenova-" + uid, VCPUs: 1, MemoryMiB: 256, RootDisk: "/nowhere"}); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(ctx, uid); err != nil || st.Power == "" {
		t.Fatalf("state: %+v, %v", st, err)
	}
	if err := d.Pause(ctx, "no-such-domain"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("pause of a missing domain: %v", err)
	}
	if err := d.Spawn(ctx, driver.Machine{}); err == nil {
		t.Fatal("a spawn of nothing succeeded")
	}
	want := []call{{"Spawn", false}, {"State", false}, {"Pause", false}, {"Spawn", true}}
	if len(heard) != len(want) {
		t.Fatalf("heard %+v, want %+v", heard, want)
	}
	for i := range want {
		if heard[i] != want[i] {
			t.Errorf("call %d: heard %+v, want %+v", i, heard[i], want[i])
		}
	}
}
