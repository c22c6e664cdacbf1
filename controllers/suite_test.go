package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/internal/driver/fake"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/scheduler"
	"github.com/kubenova/kubenova/internal/storage"
	"github.com/kubenova/kubenova/test/utils"
)

// The controller suite runs the manager's reconcilers against a real kube-apiserver and etcd,
// with one in-process agent on node "node-a" whose driver is the fake: the protocol between
// manager and agent is real, only the hypervisor is not.
// missingInstanceTimeout is the Snapshot and Migration controllers' --missing-instance-timeout.
const missingInstanceTimeout = 4 * time.Second

// taskAttemptTimeout bounds an attempt of node-a's agent: short, so that a spec sees a hung
// call cut short; ample for the fake driver's calls and qemu-img on small images.
const taskAttemptTimeout = 5 * time.Second

var (
	env        *utils.Env
	k8s        client.Client
	fakeDriver *fake.Driver
	agentStore *storage.Node
	imageStore *imagestore.Dir
	// agentImages is the image store as node-a's agent reaches it: its uploads can be made to fail.
	agentImages *failingStore
	imageDir    string
	imageFile   string
	imageSum    string
	cancel      context.CancelFunc
	// drainer is the manager's drain controller: its eviction review is called directly.
	drainer *DrainReconciler
)

const leaseNamespace = "kubenova-system"

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	SetDefaultConsistentlyDuration(2 * time.Second)
	EnforceDefaultTimeoutsWhenUsingContexts()
	RunSpecs(t, "controllers")
}

var _ = BeforeSuite(func() {
	ctrl.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	var err error
	env, err = utils.StartEnv()
	Expect(err).NotTo(HaveOccurred())
	k8s = env.Client
	ctx, c := context.WithCancel(context.Background())
	cancel = c
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metaName(leaseNamespace)})).To(Succeed())

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"}})
	Expect(err).NotTo(HaveOccurred())
	Expect(IndexInstances(ctx, mgr)).To(Succeed())
	Expect(IndexSnapshots(ctx, mgr)).To(Succeed())
	Expect(IndexMigrations(ctx, mgr)).To(Succeed())
	Expect(IndexServerGroupMembers(ctx, mgr)).To(Succeed())
	Expect((&ServerGroupReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr)).To(Succeed())
	placement := scheduler.NewPlacement()
	Expect(EnsureReservationPriorityClass(ctx, k8s, DefaultReservationPriorityClass)).To(Succeed())
	reservations := &ReservationReconciler{Client: mgr.GetClient(), Placement: placement, SystemNamespace: leaseNamespace,
		Image: "pause", PriorityClass: DefaultReservationPriorityClass}
	Expect(reservations.SetupWithManager(mgr)).To(Succeed())
	Expect((&InstanceReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("kubenova-manager"), APIReader: mgr.GetAPIReader(),
		SystemNamespace: leaseNamespace, Reservations: reservations,
		Placement: placement, Pods: scheduler.NewPodLoad(), MaxSchedulingBackoff: 2 * time.Second, TerminateRetry: time.Second,
		AllowResizeToSameHost: true}).SetupWithManager(mgr)).To(Succeed())
	drainer = &DrainReconciler{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("kubenova-drain"), MaxPerNode: 1, MaxInFlight: 5, Retry: time.Second}
	Expect(drainer.SetupWithManager(mgr)).To(Succeed())
	Expect((&HypervisorReconciler{Client: mgr.GetClient(), LeaseNamespace: leaseNamespace, Grace: time.Second}).SetupWithManager(mgr)).To(Succeed())
	// A Snapshot or Migration waits briefly for a missing instance here: the specs see both the
	// wait and the failure.
	Expect((&SnapshotReconciler{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("kubenova-snapshots"),
		MissingInstanceTimeout: missingInstanceTimeout}).SetupWithManager(mgr)).To(Succeed())
	Expect((&MigrationReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("kubenova-migrations"),
		MissingInstanceTimeout: missingInstanceTimeout}).SetupWithManager(mgr)).To(Succeed())
	imageDir = GinkgoT().TempDir()
	imageStore = &imagestore.Dir{Root: GinkgoT().TempDir()}
	Expect(EnsureImageStoreIdentity(ctx, k8s, leaseNamespace, imageStore)).To(Succeed())
	importer := &imagestore.Importer{Store: imageStore, SourceDirs: []string{imageDir}}
	for _, kind := range []v1.ImageKind{v1.KindImage, v1.KindClusterImage} {
		Expect((&ImageReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("kubenova-images"), Importer: importer,
			Kind: kind, MaxRetryBackoff: time.Second}).SetupWithManager(mgr)).To(Succeed())
	}

	// The agent of node-a, in its own manager with its node-filtered cache, as cmd/agent sets it up.
	agentMgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&v1.Instance{}: {Field: fields.OneTermEqualSelector("status.nodeName", "node-a")}}},
	})
	Expect(err).NotTo(HaveOccurred())
	fakeDriver = fake.New()
	agentImages = &failingStore{Store: imageStore}
	agentStore = &storage.Node{Root: GinkgoT().TempDir(), Images: agentImages}
	Expect((&agent.InstanceReconciler{Client: agentMgr.GetClient(), Reader: agentMgr.GetAPIReader(),
		Driver: fakeDriver, Storage: agentStore, NodeName: "node-a", VirtTypes: agent.FixedVirtType(v1.VirtTypeQEMU),
		Networks: nodeANetworks, UserDataNamespace: leaseNamespace, TaskAttemptTimeout: taskAttemptTimeout}).SetupWithManager(agentMgr)).To(Succeed())

	// A real (empty) qcow2 image, since the agent's storage makes real overlays with qemu-img.
	imageFile = filepath.Join(imageDir, "image.qcow2")
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", imageFile, "64M").CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), string(out))
	b, err := os.ReadFile(imageFile)
	Expect(err).NotTo(HaveOccurred())
	sum := sha256.Sum256(b)
	imageSum = hex.EncodeToString(sum[:])

	go func() { defer GinkgoRecover(); Expect(mgr.Start(ctx)).To(Succeed()) }()
	go func() { defer GinkgoRecover(); Expect(agentMgr.Start(ctx)).To(Succeed()) }()
})

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

// failingStore is an image store whose uploads fail while putErr is set, as a full or
// unreachable store's would.
type failingStore struct {
	imagestore.Store
	mu     sync.Mutex
	putErr error
	puts   int
}

func (f *failingStore) failPuts(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.putErr, f.puts = err, 0
}

// failedPuts says how many uploads failed since failPuts.
func (f *failingStore) failedPuts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.puts
}

func (f *failingStore) Put(ctx context.Context, key string, r io.Reader, check imagestore.Check) (imagestore.Object, string, error) {
	f.mu.Lock()
	err := f.putErr
	if err != nil {
		f.puts++
	}
	f.mu.Unlock()
	if err != nil {
		return imagestore.Object{}, "", err
	}
	return f.Store.Put(ctx, key, r, check)
}
