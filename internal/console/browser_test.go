package console

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/go-logr/logr/testr"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/devcluster"
)

// chromiumPath is where Debian's chromium package installs the browser; .ci/run
// installs it there before `make test`.
const chromiumPath = "/usr/bin/chromium"

// screenshotsEnv names a directory for the views' screenshots; with it unset they
// go to the test's temporary directory. README's come from
// ORDERLY_CONSOLE_SCREENSHOTS=$PWD/docs/console.
const screenshotsEnv = "ORDERLY_CONSOLE_SCREENSHOTS"

// TestConsoleInABrowser drives the console in a real browser against a live
// broker, with tokens the real apiserver (envtest) issues, reviews and
// authorizes: each view loads, the backlog on the page follows publishes and a
// reset, messages are found by id, key and time, and a dead letter is re-driven by
// a user who may update its ConsumerGroup after one who may only get it was
// refused, as the page shows.
func TestConsoleInABrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("no browser at %s (%v): install Debian's chromium (apt-get install -y chromium; .ci/run does)", chromiumPath, err)
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join("..", "..", "bin", "k8s", "1.36.3") // what hack/envtest.sh built
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		t.Fatalf("no kube-apiserver in %s: run `make envtest` first (%v)", assets, err)
	}
	started := time.Now()
	step := func(what string) { t.Logf("%6.2fs %s", time.Since(started).Seconds(), what) }

	env := &envtest.Environment{
		CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := devcluster.StartEnvironment(env, t.TempDir()) // its children die with the test
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, mqv1alpha1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	step("apiserver up")

	// The Kubernetes side: an Instance, its Topics and ConsumerGroup, and two
	// service accounts, one that may get them and one that may also update the
	// ConsumerGroups.
	create := func(obj client.Object) {
		t.Helper()
		if err := k8s.Create(ctx, obj); err != nil {
			t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
		}
	}
	const shop = "shop"
	create(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: shop}})
	instObj := &mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "demo"}}
	create(instObj)
	ref := mqv1alpha1.InstanceReference{Name: "demo"}
	orders := &mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "orders"}, Spec: mqv1alpha1.TopicSpec{InstanceRef: ref}}
	create(orders)
	payments := &mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "payments"}, Spec: mqv1alpha1.TopicSpec{InstanceRef: ref}}
	create(payments)
	group := &mqv1alpha1.ConsumerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "orders-http"},
		Spec: mqv1alpha1.ConsumerGroupSpec{InstanceRef: ref, GroupID: "GID_http"}}
	create(group)
	read := rbacv1.PolicyRule{APIGroups: []string{mqv1alpha1.GroupVersion.Group}, Resources: []string{"instances", "topics", "consumergroups"}, Verbs: []string{"get"}}
	update := rbacv1.PolicyRule{APIGroups: []string{mqv1alpha1.GroupVersion.Group}, Resources: []string{"consumergroups"}, Verbs: []string{"update"}}
	tokens := map[string]string{}
	for name, rules := range map[string][]rbacv1.PolicyRule{"viewer": {read}, "operator": {read, update}} {
		create(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: name}})
		create(&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "console-" + name}, Rules: rules})
		create(&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "console-" + name},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "console-" + name},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: shop, Name: name}}})
		tr, err := clientset.CoreV1().ServiceAccounts(shop).CreateToken(ctx, name, &authnv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("token of %s: %v", name, err)
		}
		tokens[name] = tr.Status.Token
	}

	// The broker side, declared as the controllers declare it: owned by the
	// objects' UIDs.
	b, err := broker.Open(broker.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	const instID = "MQ_INST_shop_demo"
	if err := b.EnsureInstance(broker.InstanceConfig{ID: instID, Owner: string(instObj.UID), Declarer: shop + "/demo"}); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []*mqv1alpha1.Topic{orders, payments} {
		if _, err := b.EnsureTopic(instID, broker.TopicConfig{Name: topic.Name, Queues: 1, Owner: string(topic.UID)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.EnsureGroup(instID, broker.GroupConfig{ID: "GID_http", Protocol: broker.HTTP, MaxRedeliveries: 1, Owner: string(group.UID)}); err != nil {
		t.Fatal(err)
	}

	srv := NewServer("127.0.0.1:0", b, k8s, KubeReviewer{Client: clientset}, testr.New(t))
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Start(ctx) }()
	var base string
	select {
	case addr := <-srv.Listening():
		base = "http://" + addr.String()
	case err := <-srvDone:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-srvDone; err != nil {
			t.Errorf("console: %v", err)
		}
	})

	shots := os.Getenv(screenshotsEnv)
	if shots == "" {
		shots = t.TempDir()
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	profile := t.TempDir() // removed after the browser is gone: cleanups run last first
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile), chromedp.WindowSize(1280, 800))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	page, cancelPage := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelPage)
	// The first call on a tab's context starts the browser, and ending the context
	// of that call would end it: so it is made on the tab's own.
	if err := chromedp.Do(page); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}
	br := &browserPage{t: t, ctx: page, shots: shots}
	br.do(chromedp.Navigate(base + "/"))
	step("browser up, console loaded")

	// Without a token the page says what it needs; a made-up one is refused.
	br.waitText("#error", "401 Unauthorized")
	br.useToken("not-a-token")
	br.waitText("#whoami", "token refused")
	br.waitText("#error", "401 Unauthorized: the apiserver does not accept this token")
	step("refused without a token and with a made-up one")

	// The operator sees the instance.
	br.useToken(tokens["operator"])
	br.waitText("#whoami", "system:serviceaccount:shop:operator")
	br.waitText(`#instances-table tr[data-instance="`+instID+`"]`, "shop/demo")
	br.screenshot("instances")
	step("instances")

	// Topics: counts and a live publish rate.
	publish := func(topic, body, key string) broker.PublishResult {
		t.Helper()
		res, err := b.Publish(ctx, instID, topic, broker.Message{Body: []byte(body), Keys: []string{key}, Tag: "created",
			Properties: map[string]string{"source": "browser-test"}, Queue: broker.AnyQueue})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	var ids []string
	for i := 1; i <= 3; i++ {
		ids = append(ids, publish("orders", fmt.Sprintf(`{"order": %d, "item": "tea"}`, i), fmt.Sprintf("order-%d", i)).ID)
	}
	br.do(chromedp.Navigate(base + "/#/i/" + instID + "/topics"))
	br.waitText(`#topics-table tr[data-topic="orders"] td.messages`, "3")
	for i := 4; i <= 5; i++ {
		ids = append(ids, publish("orders", fmt.Sprintf(`{"order": %d, "item": "milk"}`, i), fmt.Sprintf("order-%d", i)).ID)
	}
	br.waitText(`#topics-table tr[data-topic="orders"] td.messages`, "5")
	br.waitJS(`(() => { const c = document.querySelector('#topics-table tr[data-topic="orders"] td.rate'); return c && /^[1-9][0-9.]*\/s$/.test(c.textContent); })()`)
	br.screenshot("topics")
	step("topics: counts and publish rate")

	// Groups: a consumer takes one message; the backlog follows publishes.
	if ds, err := b.Pop(ctx, instID, "orders", broker.PopRequest{Group: "GID_http", Max: 1, Invisibility: 10 * time.Minute}); err != nil || len(ds) != 1 || ds[0].ID != ids[0] {
		t.Fatalf("pop: %v, %v", ds, err)
	}
	br.do(chromedp.Navigate(base + "/#/i/" + instID + "/groups"))
	row := `#groups-table tr[data-group="GID_http"] `
	br.waitText(row+"td.backlog", "5")
	br.waitText(row+"td.inflight", "1")
	for i := 6; i <= 7; i++ {
		ids = append(ids, publish("orders", fmt.Sprintf(`{"order": %d, "item": "bread"}`, i), fmt.Sprintf("order-%d", i)).ID)
	}
	br.waitText(row+"td.backlog", "7")

	// A poison message goes to the dead letters past its one redelivery, as a
	// consumer that never acknowledges it makes it.
	publish("payments", `{"payment": "declined"}`, "pay-1")
	for n := 0; ; n++ {
		if s, err := b.GroupStats(instID, "GID_http"); err != nil {
			t.Fatal(err)
		} else if s.DeadLetters == 1 {
			break
		}
		if n == 50 {
			t.Fatal("the poison message never reached the dead letters")
		}
		// Waits for the message to be visible again, rather than sleeping.
		if _, err := b.Pop(ctx, instID, "payments", broker.PopRequest{Group: "GID_http", Max: 1, Invisibility: time.Millisecond, Wait: time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	br.waitText(row+"td.deadletters", "1")
	br.waitText(row+"td.pertopic", "payments")
	br.screenshot("groups")
	step("groups: backlog followed publishes, a dead letter")

	// Reset to before the first publish: the in-flight message is forgotten and
	// the whole topic is backlog again.
	br.do(chromedp.SetValue(chromedp.CSS(row+"select.reset-topic"), "orders"))
	br.do(chromedp.SetValue(chromedp.CSS(row+"input.reset-time"), time.Now().Add(-time.Hour).Format("2006-01-02T15:04:05")))
	br.do(chromedp.Click(chromedp.CSS(row + "form.reset button")))
	br.waitText("#notice", "Reset GID_http on orders: offsets 0")
	br.waitText(row+"td.inflight", "0")
	br.waitText(row+"td.pertopic", "orders: 7 (0 in flight)")
	step("groups: reset to a time")

	// A message by id: its body, properties and state per group.
	br.do(chromedp.Navigate(base + "/#/i/" + instID + "/messages"))
	br.do(chromedp.SetValue(chromedp.ID("lookup-id"), ids[1]))
	br.do(chromedp.Click(chromedp.ID("find-id")))
	br.waitText("#message-body", `{"order": 2, "item": "tea"}`)
	br.waitText("#message-properties", "browser-test")
	br.waitText(`#deliveries tr[data-group="GID_http"] td.state`, "Pending")
	br.screenshot("message")
	step("message by id")

	// By key, and by time stored.
	br.do(chromedp.Navigate(base + "/#/i/" + instID + "/messages"))
	br.do(chromedp.SetValue(chromedp.ID("key-topic"), "orders"))
	br.do(chromedp.SetValue(chromedp.ID("lookup-key"), "order-6"))
	br.do(chromedp.Click(chromedp.ID("find-key")))
	br.waitText(`#results-table tr[data-id="`+ids[5]+`"]`, `"item": "bread"`)
	br.waitText("#results-count", "1 message(s)")
	br.do(chromedp.SetValue(chromedp.ID("range-topic"), "orders"))
	br.do(chromedp.Click(chromedp.ID("find-range")))
	br.waitText("#results-count", "7 message(s)")
	step("messages by key and by time")

	// Dead letters: the viewer may look, not re-drive; the page says so.
	deadLetters := base + "/#/i/" + instID + "/groups/GID_http/deadletters"
	br.useToken(tokens["viewer"])
	br.waitText("#whoami", "system:serviceaccount:shop:viewer")
	br.do(chromedp.Navigate(deadLetters))
	br.waitText("#deadletters-table", `{"payment": "declined"}`)
	br.do(chromedp.Click(chromedp.CSS("#deadletters-table input.pick")))
	br.do(chromedp.Click(chromedp.ID("redrive")))
	br.waitText("#error", `403 Forbidden: system:serviceaccount:shop:viewer may not update consumergroups.mq.orderly.dev/orders-http in namespace "shop"`)
	br.screenshot("deadletters-refused")
	if s, _ := b.GroupStats(instID, "GID_http"); s.DeadLetters != 1 {
		t.Fatalf("the refused re-drive moved the dead letter: %d left", s.DeadLetters)
	}
	step("re-drive refused to the viewer")

	// The operator re-drives it back to payments.
	br.useToken(tokens["operator"])
	br.waitText("#whoami", "system:serviceaccount:shop:operator")
	br.waitText("#deadletters-table", `{"payment": "declined"}`)
	br.do(chromedp.Click(chromedp.CSS("#deadletters-table input.pick")))
	br.do(chromedp.Click(chromedp.ID("redrive")))
	br.waitText("#notice", "Re-drove 1 dead letter(s) of GID_http.")
	br.waitText("#no-deadletters", "No dead letters.")
	br.screenshot("deadletters")
	if s, _ := b.GroupStats(instID, "GID_http"); s.DeadLetters != 0 {
		t.Fatalf("after the re-drive %d dead letters left", s.DeadLetters)
	}
	if ds, err := b.Pop(ctx, instID, "payments", broker.PopRequest{Group: "GID_http", Max: 1, Wait: 5 * time.Second}); err != nil || len(ds) != 1 || string(ds[0].Body) != `{"payment": "declined"}` || ds[0].ConsumedTimes != 1 {
		t.Fatalf("the re-driven message is not back on payments: %v, %v", ds, err)
	}
	step("re-driven by the operator")
}

// browserPage is one tab of the browser, with the test's waits.
type browserPage struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func (p *browserPage) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("browser: %v\npage: %s", err, p.text())
	}
}

// waitJS waits until the expression is true in the page.
func (p *browserPage) waitJS(expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		p.t.Fatalf("waiting for %s: %v\npage: %s", expr, err, p.text())
	}
}

// waitText waits until the element selector names shows text among its own.
func (p *browserPage) waitText(selector, text string) {
	p.t.Helper()
	sel, _ := json.Marshal(selector)
	want, _ := json.Marshal(text)
	p.waitJS(fmt.Sprintf(`(() => { const e = document.querySelector(%s); return !!e && !e.hidden && e.textContent.includes(%s); })()`, sel, want))
}

// useToken signs in with token, as a person pastes it into the token field.
func (p *browserPage) useToken(token string) {
	p.t.Helper()
	p.do(chromedp.SetValue(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("save-token")))
}

func (p *browserPage) screenshot(name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(p.shots, name+".png"), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// text is the page's text, for failure messages.
func (p *browserPage) text() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	return s
}
