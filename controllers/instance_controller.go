package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// instanceIDIndex indexes Instances by their effective broker-side id, to find two
// Instances claiming the same id without listing them all.
const instanceIDIndex = "mq.orderly.dev/instance-id"

// BrokerAdmin is the part of the embedded broker the controllers reconcile into.
type BrokerAdmin interface {
	EnsureInstance(cfg broker.InstanceConfig) error
	DeleteInstance(id, owner string) error
	Usage(instanceID string) (broker.Usage, error)
}

// usageRefresh is how often an Instance's status.usage is brought up to date.
const usageRefresh = time.Minute

// Endpoints are the broker addresses the operator advertises to applications.
type Endpoints struct {
	// HTTP is the mq-http endpoint URL, scheme://host:port.
	HTTP string
	// TCP is the name-server address, host:port.
	TCP string
	// GRPC is the RocketMQ 5.x gRPC endpoint, host:port; empty when not served.
	GRPC string
	// CA is the PEM of the CA the endpoints' TLS certificate chains to, handed to
	// applications in their Secret's caCert; empty without TLS or a known CA.
	CA []byte
}

// InstanceReconciler reconciles an Instance into a broker tenant and its connection Secret.
type InstanceReconciler struct {
	client.Client
	// APIReader reads around the cache, which holds only the Secrets this operator labels.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Broker    BrokerAdmin
	Endpoints Endpoints
}

// +kubebuilder:rbac:groups=mq.orderly.dev,resources=instances,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=instances/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=instances/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings the broker tenant, the connection Secret and the status of one
// Instance in line with its spec.
func (r *InstanceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, err error) {
	inst := &mqv1alpha1.Instance{}
	if err := r.Get(ctx, req.NamespacedName, inst); err != nil {
		if apierrors.IsNotFound(err) {
			forgetResourceState("Instance", req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	log := ctrl.LoggerFrom(ctx).WithValues("Instance", klog.KObj(inst))
	ctx = ctrl.LoggerInto(ctx, log)

	before := inst.DeepCopy()
	defer func() {
		// observedGeneration is written on every pass, failed or not: the Ready
		// condition says whether this generation took effect.
		inst.Status.ObservedGeneration = inst.Generation
		recordResourceState("Instance", inst)
		err = errors.Join(err, patchStatus(ctx, r.Client, before, inst, instanceStatus))
	}()

	if !inst.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, inst)
	}
	if err := r.reconcileNormal(ctx, inst); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: usageRefresh}, nil
}

func (r *InstanceReconciler) reconcileNormal(ctx context.Context, inst *mqv1alpha1.Instance) error {
	if controllerutil.AddFinalizer(inst, BrokerCleanupFinalizer) {
		if err := r.Update(ctx, inst); err != nil {
			return fmt.Errorf("failed to add finalizer: %w", err)
		}
	}

	id := EffectiveInstanceID(inst)
	cred, err := r.ensureSecret(ctx, inst, id)
	if err != nil {
		if namespaceTerminating(err) {
			// The namespace controller deleted the Secret and deletes this Instance
			// next, which wakes it: retrying would only fail until then.
			ctrl.LoggerFrom(ctx).V(1).Info("Not recreating the credentials Secret: the namespace is being deleted")
			return nil
		}
		var conflict *secretConflictError
		if errors.As(err, &conflict) {
			r.setReady(inst, metav1.ConditionFalse, mqv1alpha1.ReasonSecretConflict, conflict.Error())
			r.Recorder.Eventf(inst, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonSecretConflict, "Reconcile", "%s", conflict.Error())
			// Terminal until the Secret changes; the Secret watch brings us back.
			return nil
		}
		return err
	}

	if other, err := r.squattedNamespace(ctx, inst); err != nil {
		return err
	} else if other != "" {
		msg := fmt.Sprintf("instanceId %q has the form of the ids derived for Instances of namespace %q (MQ_INST_<namespace>_<name>); choose one that does not", id, other)
		r.setReady(inst, metav1.ConditionFalse, mqv1alpha1.ReasonInstanceIDConflict, msg)
		r.Recorder.Eventf(inst, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonInstanceIDConflict, "Reconcile", "%s", msg)
		return nil
	}

	// The tenant belongs to this namespace and name: if this object is deleted
	// without its finalizer, only an Instance of the same namespace and name adopts
	// what it leaves.
	lim := inst.Spec.Limits
	cfg := broker.InstanceConfig{ID: id, Owner: string(inst.UID), Declarer: inst.Namespace + "/" + inst.Name,
		Credentials: []broker.Credential{cred},
		AutoCreate:  broker.AutoCreatePolicy{Topics: inst.Spec.AutoCreate.Topics, Groups: inst.Spec.AutoCreate.Groups},
		Limits: broker.Limits{Topics: int(lim.Topics), Groups: int(lim.Groups), Connections: int(lim.Connections),
			PublishRate: int(lim.PublishRate), PublishBytesRate: int(lim.PublishBytesRate), MaxMessageSize: int(lim.MaxMessageSize)}}
	err = r.Broker.EnsureInstance(cfg)
	var conflict *broker.ConflictError
	if errors.As(err, &conflict) {
		holder, err := r.findHolder(ctx, id, conflict.Owner)
		if err != nil {
			return err
		}
		if holder != nil {
			msg := fmt.Sprintf("instance id %q is held by Instance %s; this Instance changes nothing in the broker until that one is deleted", id, klog.KObj(holder))
			r.setReady(inst, metav1.ConditionFalse, mqv1alpha1.ReasonInstanceIDConflict, msg)
			r.Recorder.Eventf(inst, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonInstanceIDConflict, "Reconcile", "%s", msg)
			// The holder's deletion wakes this Instance through the index watch.
			return nil
		}
		// The holder no longer exists (it was removed without its finalizer running):
		// adopt the tenant, and its topics and groups, rather than strand it.
		if conflict.Declarer != "" && conflict.Declarer != cfg.Declarer {
			msg := fmt.Sprintf("instance id %q belongs to Instance %s, which is gone; only an Instance of that namespace and name may adopt it", id, conflict.Declarer)
			r.setReady(inst, metav1.ConditionFalse, mqv1alpha1.ReasonInstanceIDConflict, msg)
			r.Recorder.Eventf(inst, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonInstanceIDConflict, "Reconcile", "%s", msg)
			return nil
		}
		ctrl.LoggerFrom(ctx).Info("Adopting instance whose owner no longer exists", "instanceId", id, "previousOwner", conflict.Owner)
		cfg.PreviousOwner = conflict.Owner
		err = r.Broker.EnsureInstance(cfg)
	}
	if err != nil {
		r.setReady(inst, metav1.ConditionFalse, mqv1alpha1.ReasonBrokerError, err.Error())
		r.Recorder.Eventf(inst, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonBrokerError, "Reconcile",
			"Failed to declare instance %q in the broker: %v", id, err)
		if errors.Is(err, broker.ErrInvalidArgument) {
			return reconcile.TerminalError(err)
		}
		return fmt.Errorf("failed to declare instance %q: %w", id, err)
	}

	if inst.Status.InstanceID == "" {
		r.Recorder.Eventf(inst, nil, corev1.EventTypeNormal, "Created", "Reconcile", "Instance %q is served by the broker", id)
	}
	inst.Status.InstanceID = id
	inst.Status.CredentialsSecret = credentialsSecretName(inst)
	inst.Status.Endpoints = mqv1alpha1.InstanceEndpoints{HTTP: r.Endpoints.HTTP, TCP: r.Endpoints.TCP, GRPC: r.Endpoints.GRPC}
	if u, err := r.Broker.Usage(id); err == nil {
		inst.Status.Usage = &mqv1alpha1.InstanceUsage{Topics: int32(u.Topics), Groups: int32(u.Groups),
			Connections: int32(u.Connections), PublishRate: int32(u.PublishRate + 0.5),
			Limits: mqv1alpha1.InstanceLimits{Topics: int32(u.Limits.Topics), Groups: int32(u.Limits.Groups),
				Connections: int32(u.Limits.Connections), PublishRate: int32(u.Limits.PublishRate),
				PublishBytesRate: int64(u.Limits.PublishBytesRate), MaxMessageSize: int32(u.Limits.MaxMessageSize)}}
	}
	r.setReady(inst, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled, "The broker serves this instance")
	return nil
}

func (r *InstanceReconciler) reconcileDelete(ctx context.Context, inst *mqv1alpha1.Instance) error {
	if !controllerutil.ContainsFinalizer(inst, BrokerCleanupFinalizer) {
		return nil
	}
	// The broker removes the tenant only if this Instance owns it: an Instance that
	// lost an id conflict never held it and must not take it from its owner.
	id := EffectiveInstanceID(inst)
	ctrl.LoggerFrom(ctx).Info("Deleting instance from the broker", "instanceId", id)
	if err := r.Broker.DeleteInstance(id, string(inst.UID)); err != nil {
		r.setReady(inst, metav1.ConditionFalse, mqv1alpha1.ReasonBrokerError, err.Error())
		return fmt.Errorf("failed to delete instance %q from the broker: %w", id, err)
	}
	r.Recorder.Eventf(inst, nil, corev1.EventTypeNormal, "Deleted", "Delete", "Instance %q released in the broker", id)
	controllerutil.RemoveFinalizer(inst, BrokerCleanupFinalizer)
	if err := r.Update(ctx, inst); err != nil {
		return client.IgnoreNotFound(err)
	}
	return nil
}

// findHolder returns the Instance with UID owner that claims id, or nil if there is
// none. It reads the apiserver, not the cache: concluding that a holder is gone on
// stale data would take a tenant from a live Instance.
func (r *InstanceReconciler) findHolder(ctx context.Context, id, owner string) (*mqv1alpha1.Instance, error) {
	var all mqv1alpha1.InstanceList
	if err := r.APIReader.List(ctx, &all); err != nil {
		return nil, fmt.Errorf("failed to list Instances: %w", err)
	}
	for i := range all.Items {
		if c := &all.Items[i]; string(c.UID) == owner && EffectiveInstanceID(c) == id {
			return c, nil
		}
	}
	return nil, nil
}

// squattedNamespace returns the namespace whose derived instance ids (MQ_INST_<ns>_
// <name>) inst's custom spec.instanceId takes the form of, if that is another
// existing namespace: such an id would take a tenant id from an Instance of that
// namespace before it is created. Ids of other shapes, such as the cloud services'
// MQ_INST_<account>_<suffix> that migrating users keep, are free.
func (r *InstanceReconciler) squattedNamespace(ctx context.Context, inst *mqv1alpha1.Instance) (string, error) {
	rest, ok := strings.CutPrefix(inst.Spec.InstanceID, "MQ_INST_")
	if !ok {
		return "", nil
	}
	ns, _, ok := strings.Cut(rest, "_")
	if !ok || ns == inst.Namespace || ns == "" {
		return "", nil
	}
	err := r.APIReader.Get(ctx, client.ObjectKey{Name: ns}, &corev1.Namespace{})
	switch {
	case apierrors.IsNotFound(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("failed to look up namespace %q: %w", ns, err)
	}
	return ns, nil
}

// secretConflictError reports a Secret with the chosen name that this Instance did not create.
type secretConflictError struct{ name string }

func (e *secretConflictError) Error() string {
	return fmt.Sprintf("Secret %q exists and was not created by this Instance; the operator never overwrites it. Delete it or set spec.credentialsSecretName", e.name)
}

// ensureSecret makes sure the Instance's connection Secret exists, is controlled by
// the Instance and carries current connection settings, and returns its AccessKey
// pair. A Secret this Instance did not create is never touched.
func (r *InstanceReconciler) ensureSecret(ctx context.Context, inst *mqv1alpha1.Instance, id string) (broker.Credential, error) {
	key := types.NamespacedName{Namespace: inst.Namespace, Name: credentialsSecretName(inst)}
	secret := &corev1.Secret{}
	err := r.Get(ctx, key, secret)
	if apierrors.IsNotFound(err) {
		// The cache only sees Secrets this operator labels; ask the apiserver before
		// concluding the name is free.
		err = r.APIReader.Get(ctx, key, secret)
	}
	switch {
	case apierrors.IsNotFound(err):
		secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	case err != nil:
		return broker.Credential{}, fmt.Errorf("failed to get Secret %s: %w", key.Name, err)
	case !metav1.IsControlledBy(secret, inst):
		return broker.Credential{}, &secretConflictError{name: key.Name}
	}

	desired := secret.DeepCopy()
	if desired.Labels == nil {
		desired.Labels = map[string]string{}
	}
	maps.Copy(desired.Labels, secretLabels(inst))
	desired.Type = corev1.SecretTypeOpaque
	if desired.Data == nil {
		desired.Data = map[string][]byte{}
	}
	if len(desired.Data[mqv1alpha1.SecretKeyAccessKeyID]) == 0 || len(desired.Data[mqv1alpha1.SecretKeyAccessKeySecret]) == 0 {
		cred, err := newCredential()
		if err != nil {
			return broker.Credential{}, err
		}
		desired.Data[mqv1alpha1.SecretKeyAccessKeyID] = []byte(cred.AccessKeyID)
		desired.Data[mqv1alpha1.SecretKeyAccessKeySecret] = []byte(cred.AccessKeySecret)
	}
	desired.Data[mqv1alpha1.SecretKeyInstanceID] = []byte(id)
	desired.Data[mqv1alpha1.SecretKeyHTTPEndpoint] = []byte(r.Endpoints.HTTP)
	desired.Data[mqv1alpha1.SecretKeyTCPEndpoint] = []byte(r.Endpoints.TCP)
	if r.Endpoints.GRPC != "" {
		desired.Data[mqv1alpha1.SecretKeyGRPCEndpoint] = []byte(r.Endpoints.GRPC)
	} else {
		delete(desired.Data, mqv1alpha1.SecretKeyGRPCEndpoint)
	}
	if len(r.Endpoints.CA) > 0 {
		desired.Data[mqv1alpha1.SecretKeyCACert] = r.Endpoints.CA
	} else {
		delete(desired.Data, mqv1alpha1.SecretKeyCACert)
	}
	if err := controllerutil.SetControllerReference(inst, desired, r.Scheme); err != nil {
		return broker.Credential{}, fmt.Errorf("failed to own Secret %s: %w", key.Name, err)
	}

	cred := broker.Credential{
		AccessKeyID:     string(desired.Data[mqv1alpha1.SecretKeyAccessKeyID]),
		AccessKeySecret: string(desired.Data[mqv1alpha1.SecretKeyAccessKeySecret]),
	}
	log := ctrl.LoggerFrom(ctx).WithValues("Secret", key.Name)
	if secret.CreationTimestamp.IsZero() {
		log.Info("Creating credentials Secret")
		if err := r.Create(ctx, desired); err != nil {
			if apierrors.IsAlreadyExists(err) { // created by someone else since we looked
				return broker.Credential{}, &secretConflictError{name: key.Name}
			}
			return broker.Credential{}, fmt.Errorf("failed to create Secret %s: %w", key.Name, err)
		}
		r.Recorder.Eventf(inst, nil, corev1.EventTypeNormal, "SecretCreated", "Reconcile", "Created credentials Secret %s", key.Name)
		return cred, nil
	}
	if !equality.Semantic.DeepEqual(secret, desired) {
		log.Info("Updating credentials Secret")
		if err := r.Update(ctx, desired); err != nil {
			return broker.Credential{}, fmt.Errorf("failed to update Secret %s: %w", key.Name, err)
		}
	}
	return cred, nil
}

// EffectiveInstanceID is the broker-side id of inst: spec.instanceId, or one derived
// from namespace and name. Namespaces hold no '_' or '.', so the first '_' after the
// prefix separates namespace from name and distinct Instances get distinct ids.
func EffectiveInstanceID(inst *mqv1alpha1.Instance) string {
	if inst.Spec.InstanceID != "" {
		return inst.Spec.InstanceID
	}
	return "MQ_INST_" + inst.Namespace + "_" + strings.ReplaceAll(inst.Name, ".", "_")
}

func credentialsSecretName(inst *mqv1alpha1.Instance) string {
	if inst.Spec.CredentialsSecretName != "" {
		return inst.Spec.CredentialsSecretName
	}
	return inst.Name + "-credentials"
}

// setReady sets the Ready condition for the Instance's current generation.
func (r *InstanceReconciler) setReady(inst *mqv1alpha1.Instance, status metav1.ConditionStatus, reason, message string) {
	setCondition(inst, mqv1alpha1.ConditionReady, status, reason, message)
}

// instanceStatus is the part of an Instance that patchStatus writes.
func instanceStatus(inst *mqv1alpha1.Instance) any { return inst.Status }

// SetupWithManager registers the controller, its index and its watches.
func (r *InstanceReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &mqv1alpha1.Instance{}, instanceIDIndex, func(o client.Object) []string {
		return []string{EffectiveInstanceID(o.(*mqv1alpha1.Instance))}
	}); err != nil {
		return fmt.Errorf("failed to index Instances by id: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&mqv1alpha1.Instance{}).
		Owns(&corev1.Secret{}).
		// Any change to an Instance wakes the others claiming its id, so a conflict
		// resolves as soon as its owner goes away.
		Watches(&mqv1alpha1.Instance{}, enqueueMapped(mgr.GetLogger().WithValues("controller", "instance", "watch", "Instance"), r.sameIDInstances),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
				return !e.ObjectNew.GetDeletionTimestamp().IsZero()
			}})).
		Named("instance").
		Complete(r)
}

// sameIDInstances maps an Instance to the other Instances claiming its id.
func (r *InstanceReconciler) sameIDInstances(ctx context.Context, o client.Object) ([]reconcile.Request, error) {
	inst, ok := o.(*mqv1alpha1.Instance)
	if !ok {
		return nil, nil
	}
	var list mqv1alpha1.InstanceList
	if err := r.List(ctx, &list, client.MatchingFields{instanceIDIndex: EffectiveInstanceID(inst)}); err != nil {
		return nil, err
	}
	var reqs []reconcile.Request
	for _, other := range list.Items {
		if other.UID != inst.UID {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&other)})
		}
	}
	return reqs, nil
}

// namespaceTerminating reports whether err is the apiserver refusing to create an
// object in a namespace that is being deleted. What the namespace holds is deleted
// with it, so a reconciler that gets it has nothing to retry.
func namespaceTerminating(err error) bool {
	return apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}
