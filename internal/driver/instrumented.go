package driver

import (
	"context"
	"errors"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Observer hears of every call into a driver: its method, how long it took, and whether it
// failed (a domain that is not there is no failure: callers ask in order to find out).
type Observer func(method string, took time.Duration, failed bool)

// Instrument wraps a driver so that observe hears of each of its calls. Events and Close pass
// through unobserved.
func Instrument(d Driver, observe Observer) Driver {
	return &instrumented{Driver: d, observe: observe}
}

type instrumented struct {
	Driver
	observe Observer
}

// done reports a call that began at began and ended with *err.
func (i *instrumented) done(method string, began time.Time, err *error) {
	i.observe(method, time.Since(began), *err != nil && !errors.Is(*err, ErrNotFound))
}

func (i *instrumented) Spawn(ctx context.Context, m Machine) (err error) {
	defer i.done("Spawn", time.Now(), &err)
	return i.Driver.Spawn(ctx, m)
}

func (i *instrumented) Define(ctx context.Context, m Machine) (err error) {
	defer i.done("Define", time.Now(), &err)
	return i.Driver.Define(ctx, m)
}

func (i *instrumented) Destroy(ctx context.Context, uuid string) (err error) {
	defer i.done("Destroy", time.Now(), &err)
	return i.Driver.Destroy(ctx, uuid)
}

func (i *instrumented) RequestShutdown(ctx context.Context, uuid string) (err error) {
	defer i.done("RequestShutdown", time.Now(), &err)
	return i.Driver.RequestShutdown(ctx, uuid)
}

func (i *instrumented) PowerOff(ctx context.Context, uuid string) (err error) {
	defer i.done("PowerOff", time.Now(), &err)
	return i.Driver.PowerOff(ctx, uuid)
}

func (i *instrumented) Pause(ctx context.Context, uuid string) (err error) {
	defer i.done("Pause", time.Now(), &err)
	return i.Driver.Pause(ctx, uuid)
}

func (i *instrumented) Unpause(ctx context.Context, uuid string) (err error) {
	defer i.done("Unpause", time.Now(), &err)
	return i.Driver.Unpause(ctx, uuid)
}

func (i *instrumented) Suspend(ctx context.Context, uuid string) (err error) {
	defer i.done("Suspend", time.Now(), &err)
	return i.Driver.Suspend(ctx, uuid)
}

func (i *instrumented) Resume(ctx context.Context, uuid string) (err error) {
	defer i.done("Resume", time.Now(), &err)
	return i.Driver.Resume(ctx, uuid)
}

func (i *instrumented) BackupDisk(ctx context.Context, uuid, target string) (err error) {
	defer i.done("BackupDisk", time.Now(), &err)
	return i.Driver.BackupDisk(ctx, uuid, target)
}

func (i *instrumented) MigrateLive(ctx context.Context, uuid string, to MigrationTarget) (err error) {
	defer i.done("MigrateLive", time.Now(), &err)
	return i.Driver.MigrateLive(ctx, uuid, to)
}

func (i *instrumented) MigrationProgress(ctx context.Context, uuid string) (stats MigrationStats, inFlight bool, err error) {
	defer i.done("MigrationProgress", time.Now(), &err)
	return i.Driver.MigrationProgress(ctx, uuid)
}

func (i *instrumented) AbortMigration(ctx context.Context, uuid string) (err error) {
	defer i.done("AbortMigration", time.Now(), &err)
	return i.Driver.AbortMigration(ctx, uuid)
}

func (i *instrumented) ArrivedMigration(ctx context.Context, uuid string) (stats MigrationStats, arrived bool, err error) {
	defer i.done("ArrivedMigration", time.Now(), &err)
	return i.Driver.ArrivedMigration(ctx, uuid)
}

func (i *instrumented) State(ctx context.Context, uuid string) (st State, err error) {
	defer i.done("State", time.Now(), &err)
	return i.Driver.State(ctx, uuid)
}

func (i *instrumented) List(ctx context.Context) (domains []Domain, err error) {
	defer i.done("List", time.Now(), &err)
	return i.Driver.List(ctx)
}

func (i *instrumented) HostInfo(ctx context.Context) (info HostInfo, err error) {
	defer i.done("HostInfo", time.Now(), &err)
	return i.Driver.HostInfo(ctx)
}

func (i *instrumented) InterfaceAddresses(ctx context.Context, uuid string) (ifaces []v1.ObservedInterface, err error) {
	defer i.done("InterfaceAddresses", time.Now(), &err)
	return i.Driver.InterfaceAddresses(ctx, uuid)
}

func (i *instrumented) Ping(ctx context.Context) (err error) {
	defer i.done("Ping", time.Now(), &err)
	return i.Driver.Ping(ctx)
}
