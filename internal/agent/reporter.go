package agent

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/scheduler"
	"github.com/kubenova/kubenova/internal/storage"
)

// Reporter keeps the agent's half of its Hypervisor's status and renews the node's Lease, the
// heartbeat the manager judges the node by. It also removes domains whose Instance is gone.
type Reporter struct {
	Client client.Client
	// Reader reads from the API server directly. Orphan checks must not trust the agent's
	// cache, which holds only this node's instances: an instance evacuated elsewhere would look
	// deleted there, and its disks would go.
	Reader  client.Reader
	Driver  driver.Driver
	Storage *storage.Node
	// Disks reports the node's disk capacity; nil means Storage.
	Disks        Disks
	NodeName     string
	VirtTypes    *VirtTypeChooser
	MigrationURI string
	// SharedStorage declares that the storage root is on storage other nodes mount too.
	SharedStorage bool
	// Reserved is held back for the node itself (Nova's reserved_host_memory_mb,
	// reserved_host_cpus and reserved_host_disk_mb); the scheduler places nothing in it.
	Reserved       v1.Resources
	AgentVersion   string
	LeaseNamespace string
	// LeaseDuration is how long a renewal vouches for the node; the agent renews at a quarter
	// of it, as kubelets do.
	LeaseDuration time.Duration
	// Networks are the networks the node has, reported in its Hypervisor for the scheduler.
	Networks []v1.HypervisorNetwork
	// ConsoleLogService is the node's console-log service; nil when it serves none.
	ConsoleLogService *v1.ConsoleLogService
	// ReportPeriod is how often capacity and versions are re-read.
	ReportPeriod time.Duration
	// CleanupPeriod is how often orphaned domains and unused cached images are looked for.
	CleanupPeriod time.Duration
	// ImageCacheGrace is how long a cached base image no instance of the node uses is kept
	// (DefaultImageCacheGrace when zero).
	ImageCacheGrace time.Duration
	// QuarantineGrace is how long the files of a vanished instance are kept in quarantine
	// before they are deleted; zero keeps them until an administrator removes them.
	QuarantineGrace time.Duration
	// Recorder records Events on the node's Hypervisor; nil records none.
	Recorder events.EventRecorder
}

// DefaultImageCacheGrace keeps an unused base image a day, as Nova's
// remove_unused_original_minimum_age_seconds does: an instance launched again soon after the
// last one went needs no new fetch.
const DefaultImageCacheGrace = 24 * time.Hour

// Start runs until ctx ends. It implements manager.Runnable.
func (r *Reporter) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("reporter")
	renew := time.NewTicker(r.LeaseDuration / 4)
	defer renew.Stop()
	report := time.NewTicker(r.ReportPeriod)
	defer report.Stop()
	cleanup := time.NewTicker(r.CleanupPeriod)
	defer cleanup.Stop()

	run := func(what string, f func(context.Context) error) {
		if err := f(ctx); err != nil && ctx.Err() == nil {
			logger.Error(err, what)
		}
	}
	run("report hypervisor", r.ReportHypervisor)
	run("renew lease", r.RenewLease)
	run("clean up orphaned domains", r.CleanupOrphans)
	run("clean up the image cache", r.CleanImageCache)
	run("report hypervisor", r.ReportHypervisor) // what the cleanup set aside
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-renew.C:
			run("renew lease", r.RenewLease)
		case <-report.C:
			run("report hypervisor", r.ReportHypervisor)
		case <-cleanup.C:
			run("clean up orphaned domains", r.CleanupOrphans)
			run("clean up the image cache", r.CleanImageCache)
			run("report hypervisor", r.ReportHypervisor)
		}
	}
}

// CleanImageCache removes the cached base images that no instance of the node has used for
// the grace period.
func (r *Reporter) CleanImageCache(ctx context.Context) error {
	grace := r.ImageCacheGrace
	if grace <= 0 {
		grace = DefaultImageCacheGrace
	}
	if err := r.Storage.Ready(); err != nil {
		return fmt.Errorf("no image cache cleanup: %w", err)
	}
	removed, err := r.Storage.RemoveUnusedBases(grace)
	if len(removed) > 0 {
		log.FromContext(ctx).Info("removed unused images from the cache", "sha256", removed, "grace", grace.String())
	}
	return err
}

// ReportHypervisor creates the node's Hypervisor if needed and patches the fields the agent owns.
func (r *Reporter) ReportHypervisor(ctx context.Context) error {
	info, err := r.Driver.HostInfo(ctx)
	if err != nil {
		return err
	}
	var disks Disks = r.Storage
	if r.Disks != nil {
		disks = r.Disks
	}
	disk, err := disks.CapacityGiB()
	if err != nil {
		return err
	}
	hv := &v1.Hypervisor{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: r.NodeName}, hv); apierrors.IsNotFound(err) {
		hv = &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: r.NodeName}}
		if err := r.Client.Create(ctx, hv); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create hypervisor %s: %w", r.NodeName, err)
		}
	} else if err != nil {
		return err
	}
	orig := hv.DeepCopy()
	s := &hv.Status
	r.checkStorage(hv)
	s.Capacity = v1.Resources{VCPUs: info.VCPUs, MemoryMiB: info.MemoryMiB, DiskGiB: disk}
	s.Reserved = r.Reserved
	virtType, why, err := r.VirtTypes.Choose(ctx, r.Driver)
	if err != nil {
		return err
	}
	s.VirtType, s.VirtTypeReason, s.LibvirtVersion, s.QEMUVersion = virtType, why, info.LibvirtVersion, info.QEMUVersion
	s.HostUUID, s.MigrationURI, s.StorageRoot, s.AgentVersion = info.HostUUID, r.MigrationURI, r.Storage.Root, r.AgentVersion
	s.StorageShared = r.SharedStorage
	s.Networks = r.Networks
	s.ConsoleLogService = r.ConsoleLogService
	// A refused root's quarantine is not the node's: the last report of it stands.
	if s.StorageUnavailable == "" {
		if err := r.reportQuarantine(s); err != nil {
			return err
		}
	}
	if !kube.Changed(orig, hv) {
		return nil
	}
	if orig.Status.VirtType != s.VirtType && r.Recorder != nil {
		r.Recorder.Eventf(hv, nil, corev1.EventTypeNormal, ReasonVirtTypeChosen, "ChooseVirtType",
			"guests run with %s: %s", s.VirtType, s.VirtTypeReason)
	}
	// A plain merge patch carries only the fields changed here, all of them the agent's, so it
	// cannot undo what the manager writes into the same status.
	return r.Client.Status().Patch(ctx, hv, client.MergeFrom(orig))
}

// RenewLease records a heartbeat.
func (r *Reporter) RenewLease(ctx context.Context) error {
	key := types.NamespacedName{Namespace: r.LeaseNamespace, Name: v1.AgentLeaseName(r.NodeName)}
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{}
	err := r.Client.Get(ctx, key, lease)
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
				Labels: map[string]string{v1.LabelHypervisor: r.NodeName}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(r.NodeName),
				LeaseDurationSeconds: ptr.To(int32(r.LeaseDuration / time.Second)), RenewTime: &now},
		}
		return r.Client.Create(ctx, lease)
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	lease.Spec.HolderIdentity = ptr.To(r.NodeName)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(r.LeaseDuration / time.Second))
	return r.Client.Update(ctx, lease)
}

// CleanupOrphans tidies what instances left on this node, as Nova's compute does at start. The
// domain of an instance that no longer exists is destroyed and its files are quarantined, never
// deleted: its terminate, which deletes them, did not run here, so nothing says they are
// unwanted (quarantine.go). The domain of an instance that lives on another node is destroyed
// (never the disks: they may be the shared disk it runs from now), and the files a finished
// move left behind are removed.
//
// It looks at the node first and at the API second, with live reads rather than the agent's
// node-filtered cache: whatever it found on the node was made for an instance created before
// the read, so an instance missing from the read is really gone. It asks about the node's own
// instances one by one (a domain's metadata and a directory's owner record name them), so its
// cost grows with the node, not with the cluster.
func (r *Reporter) CleanupOrphans(ctx context.Context) error {
	logger := log.FromContext(ctx)
	// A root that is not the node's storage (not mounted) shows files missing, or others'.
	if err := verifyStorage(ctx, r.Reader, r.Storage, r.NodeName); err != nil {
		return fmt.Errorf("no sweep: %w", err)
	}
	domains, err := r.Driver.List(ctx)
	if err != nil {
		return err
	}
	dirs, err := r.Storage.InstanceUIDs()
	if err != nil {
		return err
	}
	where := &instanceLocator{reader: r.Reader}
	withDomain := map[string]bool{}
	for _, d := range domains {
		if d.InstanceName == "" {
			continue // not kubenova's
		}
		withDomain[d.UUID] = true
		inst, err := where.instance(ctx, d.UUID, storage.Owner{Namespace: d.Namespace, Name: d.InstanceName})
		if err != nil {
			return err
		}
		switch {
		case inst == nil:
			// Its terminate did not run here (that removes the domain first): no evidence that
			// anyone wants the disk gone. The guest stops; its files are kept.
			logger.Info("stopping the domain of a vanished instance; its files go to quarantine", "domain", d.Name, "instance", d.Namespace+"/"+d.InstanceName)
			if err := r.Driver.Destroy(ctx, d.UUID); err != nil {
				return err
			}
			if err := r.quarantine(ctx, d.UUID, storage.Owner{Namespace: d.Namespace, Name: d.InstanceName}); err != nil {
				return err
			}
		case inst.Status.NodeName != "" && inst.Status.NodeName != r.NodeName && scheduler.MigrationTarget(inst) != r.NodeName:
			// (A migration's target holds the domain before status.nodeName names it.)
			switch staleGuestActionFor(inst, r.NodeName, d.Power) {
			case pauseStaleGuest:
				logger.Info("pausing the copy of a guest that ran on two nodes; the instance is recorded elsewhere", "domain", d.Name, "node", inst.Status.NodeName)
				if err := r.Driver.Pause(ctx, d.UUID); err != nil {
					return err
				}
				r.event(ctx, corev1.EventTypeWarning, ReasonStaleGuestKept, "Sweep",
					"a guest of instance %s/%s ran on %s and on %s after a failed live migration: the copy on %s is paused and kept for a person to decide",
					inst.Namespace, inst.Name, r.NodeName, inst.Status.NodeName, r.NodeName)
				continue
			case keepStaleGuest:
				logger.Info("keeping a running guest of an instance recorded elsewhere: nothing says its guest runs there", "domain", d.Name, "node", inst.Status.NodeName)
				r.event(ctx, corev1.EventTypeWarning, ReasonStaleGuestKept, "Sweep",
					"a guest of instance %s/%s runs on %s, which is recorded on %s without a record that its guest runs there: kept for a person to decide",
					inst.Namespace, inst.Name, r.NodeName, inst.Status.NodeName)
				continue
			}
			logger.Info("destroying the domain of an instance that now lives elsewhere; its disks stay", "domain", d.Name, "node", inst.Status.NodeName)
			if err := r.Driver.Destroy(ctx, d.UUID); err != nil {
				return err
			}
			delete(withDomain, d.UUID) // gone: its files are judged below, in this sweep
		}
	}
	for _, uid := range dirs {
		if withDomain[uid] {
			continue
		}
		owner, known, err := r.Storage.ReadOwner(uid)
		if err != nil {
			return err
		}
		var exists bool
		var inst *v1.Instance
		if known {
			inst, err = where.instance(ctx, uid, owner)
			exists = inst != nil
		} else {
			exists, err = where.existsAnywhere(ctx, uid)
		}
		if err != nil {
			return err
		}
		if !exists {
			if err := r.quarantine(ctx, uid, owner); err != nil {
				return err
			}
			continue
		}
		if inst != nil && inst.Status.NodeName != r.NodeName && !scheduler.Involves(inst, r.NodeName) {
			// Left by a move: removed only from storage this node does not share, or made
			// here for a move that did not arrive.
			if may, err := mayRemoveMovedFiles(ctx, r.Reader, r.Storage, r.NodeName, r.SharedStorage, inst); err != nil || (!may && !preparedFor(r.Storage, r.NodeName, uid)) {
				if err != nil {
					return err
				}
				continue
			}
			if lastCopyAfterEvacuation(inst, r.NodeName) {
				if err := r.Storage.QuarantineInstanceFiles(uid, evacuatedRecord(inst, r.NodeName)); err != nil {
					return err
				}
				r.event(ctx, corev1.EventTypeWarning, ReasonInstanceFilesQuarantined, "Quarantine",
					"the disk instance %s/%s (uid %s) left when an evacuation rebuilt it from its image on %s is kept in %s/quarantine/%s",
					inst.Namespace, inst.Name, uid, inst.Status.NodeName, r.Storage.Root, uid)
				continue
			}
			logger.Info("removing the files of an instance that moved to another node", "uid", uid, "node", inst.Status.NodeName)
			if err := r.Storage.DeleteInstanceFiles(uid); err != nil {
				return err
			}
		}
	}
	return r.expireQuarantine(ctx)
}

// instanceLocator answers, with live reads, where an instance lives.
type instanceLocator struct {
	reader client.Reader
	// all maps every instance's UID to its node; read once, and only for a directory that
	// names no owner (made before owners were recorded).
	all map[string]string
}

// instance reads the instance owner names: nil when it does not exist as the instance uid (a
// new instance of the same name is another instance).
func (l *instanceLocator) instance(ctx context.Context, uid string, owner storage.Owner) (*v1.Instance, error) {
	inst := &v1.Instance{}
	err := l.reader.Get(ctx, types.NamespacedName{Namespace: owner.Namespace, Name: owner.Name}, inst)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if string(inst.UID) != uid {
		return nil, nil
	}
	return inst, nil
}

// existsAnywhere says whether any instance has this UID, listing the cluster's instances once.
func (l *instanceLocator) existsAnywhere(ctx context.Context, uid string) (bool, error) {
	if l.all == nil {
		var list v1.InstanceList
		if err := l.reader.List(ctx, &list); err != nil {
			return false, err
		}
		l.all = make(map[string]string, len(list.Items))
		for i := range list.Items {
			l.all[string(list.Items[i].UID)] = list.Items[i].Status.NodeName
		}
	}
	_, ok := l.all[uid]
	return ok, nil
}

// NeedLeaderElection is false: every agent runs its reporter.
func (r *Reporter) NeedLeaderElection() bool { return false }
