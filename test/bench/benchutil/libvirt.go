package benchutil

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	libvirtdriver "github.com/kubenova/kubenova/internal/driver/libvirt"
)

// UntilPowerState waits until libvirt reports the domain uuid in power state want, asking over
// one open connection: a hand-made baseline that polled with virsh domstate would pay a process
// and a connection per look (tens of milliseconds), which kubenova's agent, told by libvirt's
// events, does not.
func UntilPowerState(ctx context.Context, lv *libvirtdriver.Driver, uuid string, want v1.PowerState, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := lv.State(ctx, uuid)
		if err != nil {
			return err
		}
		if st.Power == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("domain %s not %s within %s (%s)", uuid, want, timeout, st.Power)
		}
		time.Sleep(5 * time.Millisecond) // polling libvirt's state; the guest decides when it powers off
	}
}
