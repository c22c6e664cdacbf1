package libvirt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	golibvirt "libvirt.org/go/libvirt"

	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
)

// MigrateLive implements driver.Driver with a peer-to-peer live migration: this node's libvirtd
// connects to the target's itself and drives the whole move, so the move goes on (and ends
// cleanly, one way or the other) even if the agent dies in the middle. The domain is defined
// on the target and undefined here only once the guest runs there (VIR_MIGRATE_PERSIST_DEST,
// VIR_MIGRATE_UNDEFINE_SOURCE). A block migration copies each writable disk whole
// (VIR_MIGRATE_NON_SHARED_DISK) into the empty standalone disk the target made for it, so the
// target needs no base image: the one the disk was made from may be gone from the image store
// (a shelved image, deleted after the unshelve), and a copy of the top layer alone onto
// another base would be silently wrong.
func (d *Driver) MigrateLive(_ context.Context, uuid string, to driver.MigrationTarget) error {
	return d.withDedicated(func(c *golibvirt.Connect) error {
		dom, err := lookup(c, uuid)
		if err != nil {
			return err
		}
		defer func() { _ = dom.Free() }()
		x, err := dom.GetXMLDesc(golibvirt.DOMAIN_XML_MIGRATABLE | golibvirt.DOMAIN_XML_SECURE)
		if err != nil {
			return fmt.Errorf("domain %s: %w", uuid, err)
		}
		params := &golibvirt.DomainMigrateParameters{}
		if to.BandwidthMiBs > 0 {
			params.BandwidthSet, params.Bandwidth = true, to.BandwidthMiBs
		}
		if to.SourceRoot != to.TargetRoot {
			if to.SourceRoot == "" || to.TargetRoot == "" {
				return errors.New("a migration between storage roots needs both roots")
			}
			// The target keeps instance files under its own root: the same files, other paths.
			x = strings.ReplaceAll(x, "'"+strings.TrimSuffix(to.SourceRoot, "/")+"/", "'"+strings.TrimSuffix(to.TargetRoot, "/")+"/")
			x = strings.ReplaceAll(x, "\""+strings.TrimSuffix(to.SourceRoot, "/")+"/", "\""+strings.TrimSuffix(to.TargetRoot, "/")+"/")
			params.DestXMLSet, params.DestXML = true, x
			params.PersistXMLSet, params.PersistXML = true, x
		}
		if replugged, changed, err := domainxml.ReplugInterfaces(x, to.NICs); err != nil {
			return fmt.Errorf("domain %s: %w", uuid, err)
		} else if changed {
			x = replugged
			params.DestXMLSet, params.DestXML = true, x
			params.PersistXMLSet, params.PersistXML = true, x
		}
		flags := golibvirt.MIGRATE_LIVE | golibvirt.MIGRATE_PEER2PEER | golibvirt.MIGRATE_PERSIST_DEST |
			golibvirt.MIGRATE_UNDEFINE_SOURCE | golibvirt.MIGRATE_ABORT_ON_ERROR | golibvirt.MIGRATE_AUTO_CONVERGE
		if to.Block {
			flags |= golibvirt.MIGRATE_NON_SHARED_DISK
		}
		if to.SharedStorage && !to.Block {
			flags |= golibvirt.MIGRATE_UNSAFE
		}
		if to.TLS {
			flags |= golibvirt.MIGRATE_TLS
		}
		if err := dom.MigrateToURI3(to.URI, params, flags); err != nil {
			return fmt.Errorf("live-migrate domain %s to %s: %w", uuid, to.URI, err)
		}
		return nil
	})
}

// MigrationProgress implements driver.Driver.
func (d *Driver) MigrationProgress(_ context.Context, uuid string) (driver.MigrationStats, bool, error) {
	var stats driver.MigrationStats
	running := false
	err := d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		info, err := dom.GetJobStats(0)
		if isNotRunning(err) {
			return nil // shut off, as a source is between a migration's end and its undefine
		}
		if err != nil {
			return fmt.Errorf("job of domain %s: %w", uuid, err)
		}
		if info.Type == golibvirt.DOMAIN_JOB_NONE || (info.OperationSet && info.Operation != golibvirt.DOMAIN_JOB_OPERATION_MIGRATION_OUT) {
			return nil
		}
		running, stats = true, jobStats(info)
		return nil
	})
	if errors.Is(err, driver.ErrNotFound) {
		return stats, false, nil
	}
	return stats, running, err
}

// AbortMigration implements driver.Driver.
func (d *Driver) AbortMigration(_ context.Context, uuid string) error {
	err := d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		info, err := dom.GetJobStats(0)
		if isNotRunning(err) {
			return nil // shut off: as a source is once its migration ended, no job to abort
		}
		if err != nil || info.Type == golibvirt.DOMAIN_JOB_NONE {
			return err
		}
		if info.OperationSet && info.Operation != golibvirt.DOMAIN_JOB_OPERATION_MIGRATION_OUT {
			return nil
		}
		if err := dom.AbortJob(); err != nil {
			if lerr, ok := err.(golibvirt.Error); ok && lerr.Code == golibvirt.ERR_OPERATION_INVALID {
				return nil // the job ended meanwhile
			}
			return fmt.Errorf("abort the migration of domain %s: %w", uuid, err)
		}
		return nil
	})
	if errors.Is(err, driver.ErrNotFound) {
		return nil
	}
	return err
}

// ArrivedMigration implements driver.Driver: libvirt keeps the statistics of the last completed
// job with the domain, on the target too.
func (d *Driver) ArrivedMigration(_ context.Context, uuid string) (driver.MigrationStats, bool, error) {
	var stats driver.MigrationStats
	found := false
	err := d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		info, err := dom.GetJobStats(golibvirt.DOMAIN_JOB_STATS_COMPLETED)
		if err != nil {
			return fmt.Errorf("completed job of domain %s: %w", uuid, err)
		}
		if info.Type != golibvirt.DOMAIN_JOB_COMPLETED || (info.OperationSet && info.Operation != golibvirt.DOMAIN_JOB_OPERATION_MIGRATION_IN) {
			return nil
		}
		found, stats = true, jobStats(info)
		return nil
	})
	if errors.Is(err, driver.ErrNotFound) {
		return stats, false, nil
	}
	return stats, found, err
}

func jobStats(info *golibvirt.DomainJobInfo) driver.MigrationStats {
	var s driver.MigrationStats
	if info.DataTotalSet {
		s.DataTotal = int64(info.DataTotal)
	}
	if info.DataRemainingSet {
		s.DataRemaining = int64(info.DataRemaining)
	}
	if info.TimeElapsedSet {
		s.Elapsed = time.Duration(info.TimeElapsed) * time.Millisecond
	}
	if info.DowntimeSet {
		s.Downtime = time.Duration(info.Downtime) * time.Millisecond
	}
	return s
}

// withDedicated runs f, a call that may take minutes (a migration), on a connection of its
// own, so that it holds none of the operation connections that spawns and stops share.
func (d *Driver) withDedicated(f func(c *golibvirt.Connect) error) error {
	select {
	case <-d.closed:
		return fmt.Errorf("libvirt at %s: driver closed", d.uri)
	default:
	}
	c, err := golibvirt.NewConnect(d.uri)
	if err != nil {
		return fmt.Errorf("connect to libvirt at %s: %w", d.uri, err)
	}
	defer func() { _, _ = c.Close() }()
	if err := c.SetKeepAlive(keepAliveInterval, keepAliveCount); err != nil {
		return fmt.Errorf("libvirt keepalive: %w", err)
	}
	return f(c)
}
