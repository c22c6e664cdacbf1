package scheduler

import (
	"math"
	"strconv"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Reservations: what kubenova's guests hold on each node, as Kubernetes is to see it. Each
// instance's flavor, with QEMU's overhead, is carried by a reservation pod on its node (the
// manager's ReservationReconciler writes them) so that kube-scheduler and the kubelet count it.
// One pod per namespace and node carries the instances of that namespace placed there: that is
// what a namespace's ResourceQuota counts. One pod per node in kubenova's own namespace carries
// the other end of every move in flight (a migration's target, the flavor a resize keeps on its
// other node), so that a move never counts twice against a quota.

// ReservationKey names one reservation pod: the home pod of Namespace on Node, or, with Moves,
// the pod of the moves in flight that concern Node.
type ReservationKey struct {
	Namespace string
	Node      string
	Moves     bool
}

// Reserved is what a reservation pod carries: its instances' vCPUs (the pod requests their share
// at the node's CPU allocation ratio) and memory, QEMU's overhead included.
type Reserved struct {
	VCPUs     int64
	MemoryMiB int64
}

func (a Reserved) plus(b Reserved) Reserved {
	return Reserved{VCPUs: a.VCPUs + b.VCPUs, MemoryMiB: a.MemoryMiB + b.MemoryMiB}
}

func (a Reserved) minus(b Reserved) Reserved {
	return Reserved{VCPUs: a.VCPUs - b.VCPUs, MemoryMiB: a.MemoryMiB - b.MemoryMiB}
}

// ReservedFor is what one instance of these resources reserves on its node.
func ReservedFor(res v1.Resources) Reserved {
	return Reserved{VCPUs: res.VCPUs, MemoryMiB: res.MemoryMiB + MemoryOverheadMiB(res)}
}

// Memory overhead of one guest beyond its RAM: QEMU itself and its device emulation
// (guestOverheadBaseMiB), per vCPU (its thread's stack and translation state), and the
// guest's page tables and dirty bitmaps (a 64th of its RAM). The figures hold the resident
// memory measured of TCG guests on the deployed profile's nodes with room to spare (docs/design.md).
const (
	guestOverheadBaseMiB    = 160
	guestOverheadPerVCPUMiB = 8
	guestOverheadRAMShare   = 64
)

// MemoryOverheadMiB is what one guest of these resources takes of its node's memory beyond its
// RAM.
func MemoryOverheadMiB(res v1.Resources) int64 {
	return guestOverheadBaseMiB + guestOverheadPerVCPUMiB*res.VCPUs + (res.MemoryMiB+guestOverheadRAMShare-1)/guestOverheadRAMShare
}

// CPUAllocationRatio is a Hypervisor's CPU allocation ratio, Nova's default 16 when it sets none
// or sets one that is not a positive number.
func CPUAllocationRatio(hv *v1.Hypervisor) float64 {
	if hv == nil {
		return 16
	}
	ratio, err := strconv.ParseFloat(hv.Spec.CPUAllocationRatio, 64)
	if err != nil || ratio <= 0 || math.IsInf(ratio, 0) || math.IsNaN(ratio) {
		return 16
	}
	return ratio
}

// CPUShareMilli is the share of the node's CPU, in millicores, that vcpus take at this
// allocation ratio: what kubenova promises them, and so what the pods on the node must leave.
// It rounds up, so that guests are never promised less than the ratio gives them.
func CPUShareMilli(vcpus int64, ratio float64) int64 {
	return int64(math.Ceil(float64(vcpus*1000) / ratio))
}
