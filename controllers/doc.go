// Package controllers holds the operator's reconcilers: they bring the embedded
// broker, and the pods of MessageConsumers, in line with the custom resources of
// api/v1alpha1. Each reconciler reaches the broker through an interface declared
// here with the calls it makes and no others (BrokerAdmin, TopicBroker,
// GroupBroker, ConsumerBroker).
//
// Where each piece lives:
//
//   - instance_controller.go: InstanceReconciler, an Instance into a broker tenant
//     and its connection Secret; id conflicts between Instances; EffectiveInstanceID.
//     credentials.go generates the Secret's AccessKey pair.
//   - broker_object_controller.go: brokerObjectReconciler, the one reconcile of
//     Topics and ConsumerGroups: fetch, finalizer, the Instance, pause, deletion
//     policy, name conflicts, quotas, drift, events and status. Each kind adds only
//     its declare, remove and observe: topic_controller.go, consumergroup_controller.go.
//   - messageconsumer_controller.go: MessageConsumerReconciler, Reconcile and the
//     consumerScope a pass works on, the phase runner, endPass (which writes the
//     status, then releases finalizers) and the watches.
//   - messageconsumer_phases.go: the phases of a MessageConsumer's pass, in the order
//     they run: account for finished pods, stop a finished or deleted consumer's
//     pods, resolve the dependencies, admit the template, suspend, the deadline and
//     backoff limit, roll over, complete, start pods.
//   - messageconsumer_status.go: deriveStatus, the status and conditions made from
//     the scope, and nothing else; its table tests need no apiserver.
//   - messageconsumer_pods.go: how a pod is built from the template (podFor), and how
//     it is checked against the namespace's Pod Security level (admit, checkPod).
//   - status.go: patchStatus, the one status write of every controller, and
//     setCondition.
//   - watches.go: enqueueMapped, through which every watch of another kind maps an
//     event to the objects it wakes, logging the List errors it cannot return.
//   - metrics.go: the metrics beyond controller-runtime's.
//
// Habits every reconciler here keeps:
//
//   - A pass writes its status once, at its end, from a deferred function, whether
//     it succeeded or not, and writes observedGeneration on every pass: the Ready
//     condition (with its own observedGeneration) says whether that generation took.
//   - Condition types and reasons, and every enum the code compares, are constants
//     of api/v1alpha1; the values are the API.
//   - Finalizers: BrokerCleanupFinalizer holds an Instance, Topic or ConsumerGroup
//     until the broker has let go of it; ConsumerFinalizer holds a MessageConsumer
//     until its pods have stopped; TrackingFinalizer holds a finished pod until its
//     counts are in its MessageConsumer's status.
//   - A read of another object that finds nothing is a fact to act on (the object is
//     missing); any other error is returned, so the request is retried.
//   - Nothing sleeps: a reconciler requeues, or watches what it waits for.
//
// The tests: suite_test.go starts an envtest control plane, the broker and its
// servers, and every controller, for the Ginkgo specs (TestControllers, which needs
// KUBEBUILDER_ASSETS; see the Makefile's test target). The other Test functions are
// plain Go tests with no apiserver: go test ./controllers/ -run 'TestDeriveStatus'.
package controllers
