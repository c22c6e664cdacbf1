package libvirt

import (
	"context"
	"errors"
	"testing"

	golibvirt "libvirt.org/go/libvirt"

	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
)

// TestADomainThatVanishesMidCallIsNotFound: a live migration's end undefines the source's
// domain at any moment, also between the driver's look-up and its call. The agent must read
// that as the domain being gone, not as a failure of its task.
func TestADomainThatVanishesMidCallIsNotFound(t *testing.T) {
	ctx := context.Background()
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	m := machine(t, "0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e0aa")
	x, err := domainxml.Build(m)
	if err != nil {
		t.Fatal(err)
	}
	other, err := golibvirt.NewConnect(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = other.Close() }()
	dom, err := other.DomainDefineXML(x)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = dom.Free() }()

	// Defined and shut off, as a source is between a migration's end and its undefine: no
	// migration job runs.
	if _, inFlight, err := d.MigrationProgress(ctx, m.UUID); err != nil || inFlight {
		t.Fatalf("progress of a shut-off domain: in flight %v, %v; want none, no error", inFlight, err)
	}

	err = d.withDomain(m.UUID, func(looked *golibvirt.Domain) error {
		if err := dom.Undefine(); err != nil {
			t.Fatalf("undefine behind the driver's back: %v", err)
		}
		_, _, err := looked.GetState()
		return err
	})
	if !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("a call on a domain undefined after its look-up: %v; want driver.ErrNotFound", err)
	}
	if st, err := d.State(ctx, m.UUID); err != nil || !st.Departed() {
		t.Fatalf("after the undefine: %+v, %v; want gone", st, err)
	}
}
