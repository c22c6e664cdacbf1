package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/metrics"
	"github.com/kubenova/kubenova/internal/storage"
)

// The files of an instance are deleted only on positive evidence that they are unwanted: the
// instance's own terminate, or a move that finished elsewhere. An instance that merely vanished
// from the API (its finalizer removed by hand, etcd restored from an older backup, objects
// recreated from Git with new UIDs) leaves its files in quarantine: kept whole on the node,
// reported in the Hypervisor's status, by an Event and by metrics, deleted when the agent's
// --quarantine-grace ends or by an administrator (docs/operations.md, "Quarantine").

// DefaultQuarantineGrace is the agent's --quarantine-grace: a week, long enough for a person to
// notice the Event and take the disk back after a restore.
const DefaultQuarantineGrace = 7 * 24 * time.Hour

// Reasons for Events on the Hypervisor about the quarantine.
const (
	ReasonInstanceFilesQuarantined = "InstanceFilesQuarantined"
	ReasonQuarantineExpired        = "QuarantineExpired"
)

// reasonVanished is the quarantine record's reason for an instance that is gone from the API.
const reasonVanished = "InstanceVanished: no Instance with this UID exists and its terminate did not run on this node"

// reasonEvacuatedFromImage is the quarantine record's reason for the disk an evacuation left
// behind when it rebuilt the instance from its image on another node.
const reasonEvacuatedFromImage = "EvacuatedFromImage: the instance was rebuilt from its image on another node while this one was down; this is the last copy of its old disk"

// reasonReplacedByEvacuation is the quarantine record's reason for the older files an
// evacuation found on its target, where it rebuilt the instance from its image.
const reasonReplacedByEvacuation = "ReplacedByEvacuation: an evacuation rebuilt the instance from its image on this node, which held older files of it"

// lastCopyAfterEvacuation says whether this node's files of inst hold the last copy of a disk:
// the instance's served evacuation left this node and rebuilt it from its image elsewhere.
func lastCopyAfterEvacuation(inst *v1.Instance, node string) bool {
	ack := inst.Status.MigrationRequest
	return ack != nil && ack.RebuiltFromImage && ack.SourceNode == node
}

// evacuatedRecord is the quarantine record of the disk an evacuation from image left here.
func evacuatedRecord(inst *v1.Instance, node string) storage.QuarantineRecord {
	return storage.QuarantineRecord{Namespace: inst.Namespace, Name: inst.Name, Node: node,
		Reason: reasonEvacuatedFromImage, Since: time.Now().UTC()}
}

// quarantine sets an instance's files aside and says so.
func (r *Reporter) quarantine(ctx context.Context, uid string, owner storage.Owner) error {
	err := r.Storage.QuarantineInstanceFiles(uid, storage.QuarantineRecord{
		Namespace: owner.Namespace, Name: owner.Name, Node: r.NodeName, Reason: reasonVanished, Since: time.Now().UTC()})
	if err != nil {
		return err
	}
	who := owner.Namespace + "/" + owner.Name
	if owner.Name == "" {
		who = "(no owner recorded)"
	}
	log.FromContext(ctx).Info("kept the files of a vanished instance in quarantine", "uid", uid, "instance", who)
	r.event(ctx, corev1.EventTypeWarning, ReasonInstanceFilesQuarantined, "Quarantine",
		"instance %s (uid %s) vanished without its terminate; its files are kept in %s/quarantine/%s", who, uid, r.Storage.Root, uid)
	return nil
}

// expireQuarantine deletes the quarantined files whose grace period has ended.
func (r *Reporter) expireQuarantine(ctx context.Context) error {
	if r.QuarantineGrace <= 0 {
		return nil
	}
	held, err := r.Storage.QuarantinedInstances()
	if err != nil {
		return err
	}
	for _, q := range held {
		if time.Since(q.Since) < r.QuarantineGrace {
			continue
		}
		if err := r.Storage.RemoveQuarantined(q.UID); err != nil {
			return err
		}
		log.FromContext(ctx).Info("deleted quarantined files at the end of their grace period", "uid", q.UID,
			"instance", q.Namespace+"/"+q.Name, "since", q.Since, "grace", r.QuarantineGrace.String())
		r.event(ctx, corev1.EventTypeNormal, ReasonQuarantineExpired, "Delete",
			"deleted the quarantined files of instance %s/%s (uid %s, %d bytes), kept since %s",
			q.Namespace, q.Name, q.UID, q.Bytes, q.Since.Format(time.RFC3339))
	}
	return nil
}

// reportQuarantine fills the Hypervisor's quarantine fields and the node's gauges.
func (r *Reporter) reportQuarantine(s *v1.HypervisorStatus) error {
	held, err := r.Storage.QuarantinedInstances()
	if err != nil {
		return err
	}
	slices.SortFunc(held, func(a, b storage.Quarantined) int { return a.Since.Compare(b.Since) })
	var total int64
	for _, q := range held {
		total += q.Bytes
	}
	metrics.QuarantinedInstances.WithLabelValues(r.NodeName).Set(float64(len(held)))
	metrics.QuarantinedBytes.WithLabelValues(r.NodeName).Set(float64(total))
	s.QuarantinedCount = int32(len(held))
	s.Quarantined = nil
	for _, q := range held[:min(len(held), v1.MaxReportedQuarantined)] {
		s.Quarantined = append(s.Quarantined, v1.QuarantinedInstance{UID: q.UID, Namespace: q.Namespace, Name: q.Name,
			Reason: q.Reason, Since: metav1.NewTime(q.Since.Truncate(time.Second)), Bytes: q.Bytes})
	}
	return nil
}

// event records an Event on the node's Hypervisor.
func (r *Reporter) event(ctx context.Context, eventType, reason, action, note string, args ...any) {
	if r.Recorder == nil {
		return
	}
	hv := &v1.Hypervisor{}
	if err := r.Reader.Get(ctx, types.NamespacedName{Name: r.NodeName}, hv); err != nil {
		log.FromContext(ctx).Error(err, "no Event for the Hypervisor", "reason", reason, "note", fmt.Sprintf(note, args...))
		return
	}
	r.Recorder.Eventf(hv, nil, eventType, reason, action, note, args...)
}
