package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/storage"
)

// Spawning an instance's domain on the node: the root disk made from the image in the node's
// cache, the config drive, the NICs, and the domain defined and booted from them.

// spawn boots the domain from the instance's root disk, first making that disk (an overlay on
// the image, fetched into the node's cache) if it does not exist. Start and the reboots are
// spawns too: the disk is there, so they need neither the Image nor its source, as Nova's
// hard reboot needs no image.
func (r *InstanceReconciler) spawn(ctx context.Context, inst *v1.Instance) error {
	return r.spawnWith(ctx, inst, "")
}

// spawnWith is spawn with the domain booting rescueDisk, the root disk second, when it is set.
func (r *InstanceReconciler) spawnWith(ctx context.Context, inst *v1.Instance, rescueDisk string) error {
	began := time.Now()
	m, err := r.machine(ctx, inst, rescueDisk)
	if err != nil {
		return err
	}
	diskReady := time.Now()
	err = r.Driver.Spawn(ctx, m)
	log.FromContext(ctx).V(1).Info("spawned", "disk", diskReady.Sub(began).String(), "domain", time.Since(diskReady).String(), "error", err)
	return err
}

// define is spawn without the boot: the domain is defined, its disks made, and it stays off.
func (r *InstanceReconciler) define(ctx context.Context, inst *v1.Instance) error {
	m, err := r.machine(ctx, inst, "")
	if err != nil {
		return err
	}
	return r.Driver.Define(ctx, m)
}

// machine makes what the instance's domain needs on this node (the owner record, the root disk
// if it does not exist, the config drive) and describes the domain.
func (r *InstanceReconciler) machine(ctx context.Context, inst *v1.Instance, rescueDisk string) (driver.Machine, error) {
	if inst.Status.Flavor == nil || inst.Status.Image == nil {
		return driver.Machine{}, errors.New("the instance has no flavor or image in status; the manager sets both when it schedules")
	}
	uid := string(inst.UID)
	disk, err := r.Storage.RootDisk(uid)
	if err != nil {
		return driver.Machine{}, err
	}
	// The owner record goes first: whatever this spawn leaves on the node, the orphan cleanup
	// can ask about its instance by name.
	if err := r.Storage.WriteOwner(uid, storage.Owner{Namespace: inst.Namespace, Name: inst.Name}); err != nil {
		return driver.Machine{}, err
	}
	if _, err := os.Stat(disk); errors.Is(err, os.ErrNotExist) {
		if aside, err := setAsideByResize(disk); err != nil || aside {
			return driver.Machine{}, errors.Join(err, finalError{errors.New("the root disk is set aside by a resize that was neither confirmed nor reverted: revert it")})
		}
		if a := inst.Status.AdoptedDisk; a != nil && taskAction(inst) == v1.ActionLaunch {
			// The launch boots the disk this node kept in quarantine (quarantine.go).
			if err := r.Storage.AdoptQuarantined(a.UID, uid); err != nil {
				if errors.Is(err, storage.ErrQuarantinedDiskGone) {
					err = finalError{fmt.Errorf("spec.adoptQuarantinedDisk: %w (node %s); remove the field to launch from the image", err, r.NodeName)}
				}
				return driver.Machine{}, err
			}
			log.FromContext(ctx).Info("adopted a quarantined disk", "from", a.UID)
		} else if action := taskAction(inst); !createsRootDisk(action) {
			// A storage root not mounted (yet) looks exactly like this: booting a blank disk
			// would hide the guest's data behind a fresh one.
			return driver.Machine{}, finalError{fmt.Errorf("the root disk %s is missing on node %s; %s boots an existing disk and never makes a blank one "+
				"(is the storage root mounted?): rebuild the instance to start afresh from its image", disk, r.NodeName, action)}
		} else if disk, err = r.createRootDisk(ctx, inst); err != nil {
			return driver.Machine{}, err
		}
	} else if err != nil {
		return driver.Machine{}, err
	}
	consoleLog, err := r.Storage.ConsoleLog(uid)
	if err != nil {
		return driver.Machine{}, err
	}
	nics, err := r.nics(inst)
	if err != nil {
		return driver.Machine{}, err
	}
	configDrive, err := r.configDrive(ctx, inst)
	if err != nil {
		return driver.Machine{}, err
	}
	virtType, _, err := r.VirtTypes.Choose(ctx, r.Driver)
	if err != nil {
		return driver.Machine{}, err
	}
	return driver.Machine{
		UUID: uid, Name: DomainName(inst.UID), Namespace: inst.Namespace, InstanceName: inst.Name,
		VCPUs: inst.Status.Flavor.VCPUs, MemoryMiB: inst.Status.Flavor.MemoryMiB,
		RootDisk: disk, RescueDisk: rescueDisk, ConfigDrive: configDrive, ConsoleLog: consoleLog, VirtType: virtType,
		NICs: nics,
	}, nil
}

// taskAction is the action of the instance's task ("" for none).
func taskAction(inst *v1.Instance) v1.Action {
	if inst.Status.Task == nil {
		return ""
	}
	return inst.Status.Task.Action
}

// createsRootDisk says whether a task of this action may make an instance's root disk from an
// image: a launch, a rebuild, an unshelve of an offloaded instance and an evacuation that
// rebuilds from the image. Every other boot (a start, a reboot, rescue and unrescue, the end
// of a resize) needs the disk that is there.
func createsRootDisk(action v1.Action) bool {
	switch action {
	case v1.ActionLaunch, v1.ActionRebuild, v1.ActionUnshelve, v1.ActionEvacuate:
		return true
	}
	return false
}

// nics are the instance's NICs on this node: the MACs the manager fixed in status.networks,
// each plugged into this node's bridge or libvirt network of that name.
func (r *InstanceReconciler) nics(inst *v1.Instance) ([]driver.NIC, error) {
	if len(inst.Status.Networks) != len(inst.Spec.Networks) {
		return nil, fmt.Errorf("the instance has %d NICs in spec and %d in status; the manager fixes their MACs before it schedules",
			len(inst.Spec.Networks), len(inst.Status.Networks))
	}
	var out []driver.NIC
	for _, nic := range inst.Status.Networks {
		i := slices.IndexFunc(r.Networks, func(n v1.HypervisorNetwork) bool { return n.Name == nic.Network })
		if i < 0 {
			return nil, finalError{fmt.Errorf("network %s is not on node %s (its agent's --networks)", nic.Network, r.NodeName)}
		}
		out = append(out, driver.NIC{MACAddress: nic.MACAddress, Type: r.Networks[i].Type, Source: r.Networks[i].Source})
	}
	return out, nil
}

// configDrive makes the instance's cloud-init NoCloud drive, if its spec gives user data or
// SSH keys, and returns its path ("" for none). The drive is made once, at the first boot on
// the node, as Nova's config drive is; later boots (a reboot, a start) reuse it, so they never
// depend on the Secret still being there.
func (r *InstanceReconciler) configDrive(ctx context.Context, inst *v1.Instance) (string, error) {
	if inst.Spec.UserData == nil && len(inst.Spec.SSHAuthorizedKeys) == 0 && len(inst.Status.Networks) == 0 {
		return "", nil
	}
	uid := string(inst.UID)
	path, err := r.Storage.ConfigDrive(uid)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	var meta strings.Builder
	fmt.Fprintf(&meta, "instance-id: %s\nlocal-hostname: %s\n", strconv.Quote(uid), strconv.Quote(inst.Name))
	if keys := inst.Spec.SSHAuthorizedKeys; len(keys) > 0 {
		meta.WriteString("public-keys:\n")
		for _, k := range keys {
			// A JSON string is a YAML double-quoted scalar: a key's comment cannot break the document.
			fmt.Fprintf(&meta, "  - %s\n", strconv.Quote(k))
		}
	}
	files := map[string][]byte{"meta-data": []byte(meta.String())}
	if len(inst.Status.Networks) > 0 {
		files["network-config"] = networkConfig(inst.Status.Networks)
	}
	if inst.Spec.UserData != nil {
		data, err := r.userData(ctx, inst)
		if err != nil {
			return "", err
		}
		files["user-data"] = data
	}
	return r.Storage.WriteConfigDrive(ctx, uid, files)
}

// networkConfig is cloud-init's network configuration (version 2) for the NICs: each one, found
// by its MAC and named ethN in the order of spec.networks, asks for its address by DHCP.
func networkConfig(nics []v1.NICStatus) []byte {
	var b strings.Builder
	b.WriteString("version: 2\nethernets:\n")
	for i, nic := range nics {
		fmt.Fprintf(&b, "  eth%d:\n    match:\n      macaddress: %s\n    set-name: eth%d\n    dhcp4: true\n",
			i, strconv.Quote(nic.MACAddress), i)
	}
	return []byte(b.String())
}

// userData reads the instance's user data from the copy the manager keeps in kubenova's
// namespace (v1.UserDataCopyName).
func (r *InstanceReconciler) userData(ctx context.Context, inst *v1.Instance) ([]byte, error) {
	if r.Reader == nil {
		return nil, errors.New("this agent cannot read Secrets for user data")
	}
	namespace := r.UserDataNamespace
	if namespace == "" {
		namespace = v1.DefaultSystemNamespace
	}
	name := v1.UserDataCopyName(inst.UID)
	secret := &corev1.Secret{}
	if err := r.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("user data: the manager's copy %s/%s does not exist (it is made at launch, rebuild and unshelve)", namespace, name)
		}
		return nil, fmt.Errorf("user data: read %s/%s: %w", namespace, name, err)
	}
	data, ok := secret.Data[v1.UserDataCopyKey]
	if !ok {
		return nil, fmt.Errorf("user data: %s/%s has no key %q", namespace, name, v1.UserDataCopyKey)
	}
	return data, nil
}

// createRootDisk fetches the instance's image from the image store into the node's cache and
// makes its root disk. The image is the one the manager applied (status.image): the agent
// needs neither the Image object nor its source.
func (r *InstanceReconciler) createRootDisk(ctx context.Context, inst *v1.Instance) (string, error) {
	img := *inst.Status.Image
	if task := inst.Status.Task; task != nil && task.Action == v1.ActionUnshelve && task.Image != nil {
		// An offloaded instance comes back from its shelved image; status.image keeps naming
		// the image it was built from, as Nova's image_ref does.
		img = *task.Image
	}
	disks := r.disks()
	base, err := disks.EnsureImage(ctx, img)
	if err != nil {
		return "", err
	}
	return disks.CreateRootDisk(ctx, string(inst.UID), base, img.DiskFormat, inst.Status.Flavor.DiskGiB)
}
