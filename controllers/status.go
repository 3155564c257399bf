package controllers

import (
	"context"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// patchStatus writes obj's status at the end of a reconcile, as one merge patch
// computed against before, the object as the reconcile read it. Every controller
// of this package writes its status only through here.
//
// It writes nothing when status(obj) equals status(before), so a pass that changed
// nothing costs no write and wakes no watcher, and an object gone in the meantime
// has no status left to write. The MessageConsumer controller passes
// client.MergeFromWithOptimisticLock{}: its counts are sums over pods that are gone,
// and a status computed from a stale read must not overwrite a newer one (the
// conflict makes it run again on a fresh read). The other controllers' statuses are
// observations that every pass makes afresh, so they patch without the lock.
func patchStatus[T client.Object](ctx context.Context, c client.Client, before, obj T, status func(T) any, opts ...client.MergeFromOption) error {
	if equality.Semantic.DeepEqual(status(before), status(obj)) {
		return nil
	}
	return client.IgnoreNotFound(c.Status().Patch(ctx, obj, client.MergeFromWithOptions(before, opts...)))
}

// setCondition sets one status condition of any kind of this group, for the
// object's current generation.
func setCondition(obj interface {
	conditioned
	SetConditions([]metav1.Condition)
}, typ string, status metav1.ConditionStatus, reason, msg string) {
	conds := obj.GetConditions()
	meta.SetStatusCondition(&conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: obj.GetGeneration()})
	obj.SetConditions(conds)
}
