package chaos

import (
	"context"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// An operation is one Nova operation as a user starts it: from an instance brought to where it
// begins (setup, nothing armed yet), act starts it, and settled says once it is over how it
// ended ("" while it goes on).
type operation struct {
	name    string
	setup   func(ctx context.Context, c *cluster, ns string) (*v1.Instance, error)
	act     func(ctx context.Context, c *cluster, inst *v1.Instance) error
	settled settledFunc
	// restore, if set, undoes what the set-up did to the cluster once the operation ended.
	restore func(ctx context.Context, c *cluster, inst *v1.Instance) error
	// failsOnRefusedCall: the operation fails, rather than waits, when the hypervisor refuses
	// its call: a live migration libvirt refuses is over (never begun again: the guest may
	// be on the target), the guest running on at its source, as Nova's rollback leaves it.
	failsOnRefusedCall bool
}

// operations are the operations the suite kills processes in, each with the vm states it may
// end in (Error is always a defined end).
var operations = []operation{
	{name: "launch", setup: nothing, act: launch, settled: instanceIn(v1.VMStateActive)},
	{name: "stop", setup: launched, act: setPower(v1.DesiredStopped), settled: instanceIn(v1.VMStateStopped)},
	{name: "start", setup: then(launched, setPower(v1.DesiredStopped), v1.VMStateStopped), act: setPower(v1.DesiredRunning),
		settled: instanceIn(v1.VMStateActive)},
	{name: "reboot", setup: launched, act: reboot, settled: answered(rebootAnswer, instanceIn(v1.VMStateActive))},
	{name: "snapshot", setup: launched, act: snapshot, settled: snapshotDone(instanceIn(v1.VMStateActive))},
	{name: "shelve", setup: launched, act: setPower(v1.DesiredShelved), settled: instanceIn(v1.VMStateShelvedOffloaded)},
	{name: "unshelve", setup: then(launched, setPower(v1.DesiredShelved), v1.VMStateShelvedOffloaded), act: setPower(v1.DesiredRunning),
		settled: instanceIn(v1.VMStateActive)},
	{name: "resize", setup: launched, act: resize, settled: instanceIn(v1.VMStateResized)},
	{name: "confirm resize", setup: then(launched, resize, v1.VMStateResized), act: decide(v1.ResizeConfirm), settled: instanceIn(v1.VMStateActive)},
	{name: "revert resize", setup: then(launched, resize, v1.VMStateResized), act: decide(v1.ResizeRevert), settled: instanceIn(v1.VMStateActive)},
	{name: "live migration", setup: launched, act: migrate(v1.MigrationLive), settled: migrationDone(instanceIn(v1.VMStateActive)),
		failsOnRefusedCall: true},
	{name: "cold migration", setup: launched, act: migrate(v1.MigrationCold), settled: migrationDone(instanceIn(v1.VMStateResized, v1.VMStateActive))},
	{name: "rebuild", setup: launched, act: rebuild, settled: answered(rebuildAnswer, instanceIn(v1.VMStateActive))},
	{name: "rescue", setup: launched, act: rescue(true), settled: instanceIn(v1.VMStateRescued)},
	{name: "unrescue", setup: then(launched, rescue(true), v1.VMStateRescued), act: rescue(false), settled: instanceIn(v1.VMStateActive)},
	{name: "terminate", setup: launched, act: terminate, settled: terminated},
	{name: "evacuation", setup: then(launched, fenceFirstNode, v1.VMStateActive), act: migrate(v1.MigrationEvacuate),
		settled: migrationDone(instanceIn(v1.VMStateActive)), restore: unfenceFirstNode},
}

// settledFunc says how an operation ended, "" while it goes on.
type settledFunc func(ctx context.Context, c *cluster, inst *v1.Instance) (string, error)

const instanceName = "vm"

func nothing(context.Context, *cluster, string) (*v1.Instance, error) { return nil, nil }

// launched is a running instance on the first node, free to move to the other (its launch's
// node selector dropped).
func launched(ctx context.Context, c *cluster, ns string) (*v1.Instance, error) {
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: instanceName}}
	if err := launch(ctx, c, inst); err != nil {
		return nil, err
	}
	if err := settle(ctx, c, inst, instanceIn(v1.VMStateActive), v1.VMStateActive); err != nil {
		return nil, err
	}
	if err := update(ctx, c, inst, func(i *v1.Instance) { i.Spec.NodeSelector = nil }); err != nil {
		return nil, err
	}
	return inst, settle(ctx, c, inst, instanceIn(v1.VMStateActive), v1.VMStateActive)
}

// then chains a setup and an act into a setup, which must end in want.
func then(setup func(context.Context, *cluster, string) (*v1.Instance, error), act func(context.Context, *cluster, *v1.Instance) error, want v1.VMState) func(context.Context, *cluster, string) (*v1.Instance, error) {
	return func(ctx context.Context, c *cluster, ns string) (*v1.Instance, error) {
		inst, err := setup(ctx, c, ns)
		if err != nil {
			return nil, err
		}
		if err := act(ctx, c, inst); err != nil {
			return nil, err
		}
		return inst, settle(ctx, c, inst, instanceIn(want), want)
	}
}

// settle waits until the instance's set-up is over, in want.
func settle(ctx context.Context, c *cluster, inst *v1.Instance, settled settledFunc, want v1.VMState) error {
	var outcome string
	if err := waitFor(ctx, time.Minute, "the set-up of "+inst.Name, func() (bool, error) {
		var err error
		outcome, err = settled(ctx, c, inst)
		return outcome != "", err
	}); err != nil {
		return err
	}
	if outcome != string(want) {
		return fmt.Errorf("the set-up ended %s, want %s", outcome, want)
	}
	return nil
}

func launch(ctx context.Context, c *cluster, inst *v1.Instance) error {
	if inst.Namespace == "" {
		return fmt.Errorf("no namespace")
	}
	inst.Spec = v1.InstanceSpec{Flavor: flavorSmall, Image: v1.ImageReference{Kind: v1.KindClusterImage, Name: imageName},
		NodeSelector: map[string]string{"kubernetes.io/hostname": nodes[0]}}
	return c.k8s.Create(ctx, inst)
}

// update applies change to the newest version of the instance.
func update(ctx context.Context, c *cluster, inst *v1.Instance, change func(*v1.Instance)) error {
	for {
		if err := c.k8s.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
			return err
		}
		change(inst)
		err := c.k8s.Update(ctx, inst)
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

func setPower(p v1.DesiredPowerState) func(context.Context, *cluster, *v1.Instance) error {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) error {
		return update(ctx, c, inst, func(i *v1.Instance) { i.Spec.PowerState = p })
	}
}

func reboot(ctx context.Context, c *cluster, inst *v1.Instance) error {
	return update(ctx, c, inst, func(i *v1.Instance) {
		i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: metav1.NowMicro()}
	})
}

func rebuild(ctx context.Context, c *cluster, inst *v1.Instance) error {
	return update(ctx, c, inst, func(i *v1.Instance) { i.Spec.RebuildRequest = &v1.RebuildRequest{RequestedAt: metav1.NowMicro()} })
}

func resize(ctx context.Context, c *cluster, inst *v1.Instance) error {
	return update(ctx, c, inst, func(i *v1.Instance) { i.Spec.Flavor = flavorLarge })
}

func decide(d v1.ResizeDecision) func(context.Context, *cluster, *v1.Instance) error {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) error {
		return update(ctx, c, inst, func(i *v1.Instance) {
			i.Spec.ResizeRequest = &v1.ResizeRequest{Decision: d, RequestedAt: metav1.NowMicro()}
		})
	}
}

func rescue(on bool) func(context.Context, *cluster, *v1.Instance) error {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) error {
		return update(ctx, c, inst, func(i *v1.Instance) {
			i.Spec.Rescue = nil
			if on {
				i.Spec.Rescue = &v1.RescueSpec{}
			}
		})
	}
}

func snapshot(ctx context.Context, c *cluster, inst *v1.Instance) error {
	return c.k8s.Create(ctx, &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "snap"},
		Spec: v1.SnapshotSpec{InstanceName: inst.Name}})
}

func migrate(kind v1.MigrationType) func(context.Context, *cluster, *v1.Instance) error {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) error {
		return c.k8s.Create(ctx, &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "move"},
			Spec: v1.MigrationSpec{InstanceName: inst.Name, Type: kind, TargetNode: nodes[1]}})
	}
}

func terminate(ctx context.Context, c *cluster, inst *v1.Instance) error {
	return client.IgnoreNotFound(c.k8s.Delete(ctx, inst))
}

// instanceIn: the manager has served the spec's generation, no task runs, and the vm state is
// one of final, or Error; the outcome is the vm state.
func instanceIn(final ...v1.VMState) settledFunc {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) (string, error) {
		if err := c.k8s.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
			return "", err
		}
		s := inst.Status
		if s.ObservedGeneration != inst.Generation || s.Task != nil {
			return "", nil
		}
		if stalled := meta.FindStatusCondition(s.Conditions, v1.ConditionStalled); stalled != nil && stalled.Status == metav1.ConditionTrue {
			return fmt.Sprintf("%s, refused (%s)", s.VMState, stalled.Reason), nil
		}
		if !slices.Contains(final, s.VMState) && s.VMState != v1.VMStateError {
			return "", nil
		}
		return string(s.VMState), nil
	}
}

func rebootAnswer(s *v1.InstanceStatus) *v1.RequestStatus  { return s.RebootRequest }
func rebuildAnswer(s *v1.InstanceStatus) *v1.RequestStatus { return s.RebuildRequest }

// answered: a one-shot request answered for good, and the instance settled.
func answered(answer func(*v1.InstanceStatus) *v1.RequestStatus, instance settledFunc) settledFunc {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) (string, error) {
		state, err := instance(ctx, c, inst)
		if state == "" || err != nil {
			return "", err
		}
		a := answer(&inst.Status)
		if a == nil || a.Result == v1.RequestAccepted {
			return "", nil
		}
		return fmt.Sprintf("%s, request %s", state, a.Result), nil
	}
}

func snapshotDone(instance settledFunc) settledFunc {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) (string, error) {
		snap := &v1.Snapshot{}
		if err := c.k8s.Get(ctx, client.ObjectKey{Namespace: inst.Namespace, Name: "snap"}, snap); err != nil {
			return "", err
		}
		if snap.Status.Phase != v1.SnapshotSucceeded && snap.Status.Phase != v1.SnapshotFailed {
			return "", nil
		}
		state, err := instance(ctx, c, inst)
		if state == "" || err != nil {
			return "", err
		}
		return fmt.Sprintf("%s, snapshot %s", state, snap.Status.Phase), nil
	}
}

func migrationDone(instance settledFunc) settledFunc {
	return func(ctx context.Context, c *cluster, inst *v1.Instance) (string, error) {
		mig := &v1.Migration{}
		if err := c.k8s.Get(ctx, client.ObjectKey{Namespace: inst.Namespace, Name: "move"}, mig); err != nil {
			return "", err
		}
		// A cold migration's Migration finalizes once the resize it made is confirmed or
		// reverted: until then the move is over, the instance Resized.
		if mig.Status.Phase != v1.MigrationSucceeded && mig.Status.Phase != v1.MigrationFailed &&
			(mig.Status.Phase != v1.MigrationFinalizing || mig.Spec.Type != v1.MigrationCold) {
			return "", nil
		}
		state, err := instance(ctx, c, inst)
		if state == "" || err != nil {
			return "", err
		}
		return fmt.Sprintf("%s on %s, migration %s", state, inst.Status.NodeName, mig.Status.Phase), nil
	}
}

func terminated(ctx context.Context, c *cluster, inst *v1.Instance) (string, error) {
	err := c.k8s.Get(ctx, client.ObjectKeyFromObject(inst), &v1.Instance{})
	if apierrors.IsNotFound(err) {
		return "Deleted", nil
	}
	return "", err
}

// fenceFirstNode stops the first node's agent and its guests (the node lost power) and fences
// the node, as an administrator does before evacuating it, and waits until it is down.
func fenceFirstNode(ctx context.Context, c *cluster, inst *v1.Instance) error {
	node := nodes[0]
	if err := c.agents[node].stop(30 * time.Second); err != nil {
		return err
	}
	c.hosts[node].SetPowerState(string(inst.UID), v1.PowerStateShutdown, "Crashed")
	if err := setForcedDown(ctx, c, node, true); err != nil {
		return err
	}
	return waitFor(ctx, time.Minute, node+" down", func() (bool, error) {
		hv := &v1.Hypervisor{}
		err := c.k8s.Get(ctx, client.ObjectKey{Name: node}, hv)
		return err == nil && hv.Status.State == v1.HypervisorDown, err
	})
}

// unfenceFirstNode brings the first node's agent back, unfenced; its copy of the evacuated
// guest must never run again.
func unfenceFirstNode(ctx context.Context, c *cluster, inst *v1.Instance) error {
	node := nodes[0]
	if err := setForcedDown(ctx, c, node, false); err != nil {
		return err
	}
	if run := c.agents[node].current(); run.ended() {
		if err := c.agents[node].start(); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, time.Minute, node+" up again", func() (bool, error) {
		hv := &v1.Hypervisor{}
		err := c.k8s.Get(ctx, client.ObjectKey{Name: node}, hv)
		return err == nil && hv.Status.State == v1.HypervisorUp, err
	}); err != nil {
		return err
	}
	if st, err := c.hosts[node].State(ctx, string(inst.UID)); err != nil || st.Power == v1.PowerStateRunning || st.Power == v1.PowerStatePaused {
		return fmt.Errorf("the evacuated node's copy is %s once its agent is back (%v)", st.Power, err)
	}
	return nil
}

func setForcedDown(ctx context.Context, c *cluster, node string, down bool) error {
	for {
		hv := &v1.Hypervisor{}
		if err := c.k8s.Get(ctx, client.ObjectKey{Name: node}, hv); err != nil {
			return err
		}
		if hv.Spec.ForcedDown == down {
			return nil
		}
		hv.Spec.ForcedDown = down
		err := c.k8s.Update(ctx, hv)
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}
