package console

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// fakeReviewer knows a few tokens, and what each user may do.
type fakeReviewer struct {
	mu      sync.Mutex
	users   map[string]User
	allow   map[string]func(Access) bool
	authns  int
	authzs  int
	lastSAR Access
}

func (f *fakeReviewer) Authenticate(_ context.Context, token string) (User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authns++
	u, ok := f.users[token]
	if !ok {
		return User{}, ErrUnauthenticated
	}
	return u, nil
}

func (f *fakeReviewer) Authorize(_ context.Context, u User, a Access) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authzs++
	f.lastSAR = a
	allow := f.allow[u.Name]
	return allow != nil && allow(a), nil
}

func (f *fakeReviewer) counts() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.authns, f.authzs
}

const (
	instID = "MQ_INST_shop_demo"
	ns     = "shop"
)

type apiFixture struct {
	t        *testing.T
	b        *broker.Broker
	reviewer *fakeReviewer
	now      time.Time
	h        http.Handler
	dead     string // the id of the dead letter of GID_http
}

// newAPIFixture is a broker with an instance declared by an Instance of namespace
// shop, a topic and two groups, one of them with a dead letter; and a console in
// front of it whose reviewer knows a viewer (get on everything in shop), an
// operator (get, and update on ConsumerGroups) and a stranger (nothing).
func newAPIFixture(t *testing.T) *apiFixture {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := mqv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	inst := &mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo", UID: "uid-instance"}}
	cg := &mqv1alpha1.ConsumerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "orders-http", UID: "uid-group"}}
	objects := fake.NewClientBuilder().WithScheme(scheme).WithObjects(inst, cg).Build()

	b, err := broker.Open(broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.EnsureInstance(broker.InstanceConfig{ID: instID, Owner: "uid-instance"}))
	must(b.EnsureInstance(broker.InstanceConfig{ID: "MQ_INST_orphan", Owner: "uid-gone"}))
	_, err = b.EnsureTopic(instID, broker.TopicConfig{Name: "orders", Queues: 2, Owner: "uid-topic"})
	must(err)
	_, err = b.EnsureGroup(instID, broker.GroupConfig{ID: "GID_http", Protocol: broker.HTTP, MaxRedeliveries: 1, Owner: "uid-group"})
	must(err)
	_, err = b.EnsureGroup(instID, broker.GroupConfig{ID: "GID_auto", Protocol: broker.TCP, Owner: broker.AutoCreatedOwner})
	must(err)
	ctx := context.Background()
	_, err = b.Publish(ctx, instID, "orders", broker.Message{Body: []byte("poison"), Keys: []string{"k1"}, Queue: broker.AnyQueue})
	must(err)
	// Popped past its one redelivery, "poison" goes to the dead letters.
	for range 20 {
		if s, _ := b.GroupStats(instID, "GID_http"); s.DeadLetters > 0 {
			break
		}
		if _, err := b.Pop(ctx, instID, "orders", broker.PopRequest{Group: "GID_http", Max: 16, Invisibility: time.Millisecond, Wait: 20 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	dead, _, err := b.DeadLetters(instID, "GID_http", 0, 16)
	if err != nil || len(dead) == 0 {
		t.Fatalf("no dead letter to work with: %v, %v", dead, err)
	}
	_, err = b.Publish(ctx, instID, "orders", broker.Message{Body: []byte{0, 1, 2, 0xff}, Keys: []string{"bin"}, Queue: broker.AnyQueue})
	must(err)

	inShop := func(verbs ...string) func(Access) bool {
		return func(a Access) bool {
			for _, v := range verbs {
				if a.Namespace == ns && (a.Verb == v && (v == "get" || a.Resource == "consumergroups")) {
					return true
				}
			}
			return false
		}
	}
	r := &fakeReviewer{
		users: map[string]User{"viewer-token": {Name: "viewer"}, "operator-token": {Name: "operator"}, "stranger-token": {Name: "stranger"}},
		allow: map[string]func(Access) bool{"viewer": inShop("get"), "operator": inShop("get", "update")},
	}
	f := &apiFixture{t: t, b: b, reviewer: r, now: time.Unix(1_700_000_000, 0), dead: dead[0].ID}
	s := NewServer("", b, objects, r, testr.New(t))
	s.Now = func() time.Time { return f.now }
	f.h = s.Handler()
	return f
}

// do sends a request and decodes its JSON answer.
func (f *apiFixture) do(method, path, token, contentType, body string) (int, map[string]any) {
	f.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	var out map[string]any
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		f.t.Fatalf("%s %s: content type %q, body %q", method, path, ct, rec.Body.String())
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		f.t.Fatalf("%s %s: %v in %q", method, path, err, rec.Body.String())
	}
	return rec.Code, out
}

func TestAPIAuthDecisions(t *testing.T) {
	f := newAPIFixture(t)
	groups := "/api/instances/" + instID + "/groups"
	redrive := groups + "/GID_http/redrive"
	body := `{"ids":["` + f.dead + `"]}`
	for _, c := range []struct {
		name, method, path, token, contentType, body string
		status                                       int
		code                                         string
	}{
		{"no token", "GET", groups, "", "", "", 401, "Unauthorized"},
		{"unknown token", "GET", groups, "made-up", "", "", 401, "Unauthorized"},
		{"stranger reads", "GET", groups, "stranger-token", "", "", 403, "Forbidden"},
		{"viewer reads groups", "GET", groups, "viewer-token", "", "", 200, ""},
		{"viewer reads topics", "GET", "/api/instances/" + instID + "/topics", "viewer-token", "", "", 200, ""},
		{"an instance no Instance declares", "GET", "/api/instances/MQ_INST_orphan/groups", "viewer-token", "", "", 404, "NotFound"},
		{"viewer re-drives", "POST", redrive, "viewer-token", "application/json", body, 403, "Forbidden"},
		{"operator re-drives a form", "POST", redrive, "operator-token", "application/x-www-form-urlencoded", "ids=x", 415, "UnsupportedMediaType"},
		{"operator re-drives too much", "POST", redrive, "operator-token", "application/json", `{"ids":["` + strings.Repeat("A", maxBodyBytes) + `"]}`, 400, "BadRequest"},
		{"operator re-drives unknown fields", "POST", redrive, "operator-token", "application/json", `{"ids":[],"all":true}`, 400, "BadRequest"},
		{"operator re-drives", "POST", redrive, "operator-token", "application/json", body, 200, ""},
		{"re-drive by GET", "GET", redrive, "operator-token", "", "", 404, "NotFound"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			if c.contentType != "" {
				req.Header.Set("Content-Type", c.contentType)
			}
			rec := httptest.NewRecorder()
			f.h.ServeHTTP(rec, req)
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, c.status, rec.Body.String())
			}
			if c.code != "" {
				var e struct{ Code, Message string }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != c.code || e.Message == "" {
					t.Fatalf("error body %q: %v; want code %s", rec.Body.String(), err, c.code)
				}
			}
		})
	}
	// The operator's re-drive checked update on the ConsumerGroup that declares
	// the group, and took the dead letter back to its topic.
	if want := (Access{Verb: "update", Resource: "consumergroups", Namespace: ns, Name: "orders-http"}); f.reviewer.lastSAR != want {
		t.Errorf("last access reviewed %+v, want %+v", f.reviewer.lastSAR, want)
	}
	if dead, _, _ := f.b.DeadLetters(instID, "GID_http", 0, 16); len(dead) != 0 {
		t.Errorf("dead letters left after the re-drive: %d", len(dead))
	}
}

func TestAPIWriteToAGroupNoObjectDeclaresNeedsUpdateOnAllGroups(t *testing.T) {
	f := newAPIFixture(t)
	reset := "/api/instances/" + instID + "/groups/GID_auto/reset"
	status, out := f.do("POST", reset, "operator-token", "application/json", `{"topic":"orders","time":"2020-01-01T00:00:00Z"}`)
	if status != 200 {
		t.Fatalf("reset: %d %v", status, out)
	}
	if want := (Access{Verb: "update", Resource: "consumergroups", Namespace: ns}); f.reviewer.lastSAR != want {
		t.Errorf("access reviewed %+v, want %+v", f.reviewer.lastSAR, want)
	}
	if offs, _ := out["offsets"].([]any); len(offs) != 2 {
		t.Errorf("offsets %v", out["offsets"])
	}
	if status, out := f.do("POST", reset, "operator-token", "application/json", `{"topic":"orders","time":"yesterday"}`); status != 400 {
		t.Errorf("reset to no time: %d %v", status, out)
	}
}

func TestAPIReviewsAreCachedByToken(t *testing.T) {
	f := newAPIFixture(t)
	path := "/api/instances/" + instID + "/topics"
	f.do("GET", path, "viewer-token", "", "")
	n1, z1 := f.reviewer.counts()
	f.do("GET", path, "viewer-token", "", "")
	if n2, z2 := f.reviewer.counts(); n2 != n1 || z2 != z1 {
		t.Fatalf("a second request within the TTL reviewed again: %d/%d -> %d/%d", n1, z1, n2, z2)
	}
	f.do("GET", path, "made-up", "", "")
	f.do("GET", path, "made-up", "", "")
	if n3, _ := f.reviewer.counts(); n3 != n1+1 {
		t.Fatalf("a refused token reviewed %d times, want once", n3-n1)
	}
	f.now = f.now.Add(reviewTTL)
	f.do("GET", path, "viewer-token", "", "")
	if n4, z4 := f.reviewer.counts(); n4 != n1+2 || z4 <= z1 {
		t.Fatalf("after the TTL: %d/%d reviews, want more than %d/%d", n4, z4, n1+1, z1)
	}
}

func TestAPIViews(t *testing.T) {
	f := newAPIFixture(t)
	status, out := f.do("GET", "/api/instances", "viewer-token", "", "")
	if insts, _ := out["instances"].([]any); status != 200 || len(insts) != 1 || insts[0].(map[string]any)["namespace"] != ns {
		t.Fatalf("instances: %d %v", status, out)
	}
	if status, out := f.do("GET", "/api/instances", "stranger-token", "", ""); status != 200 || len(out["instances"].([]any)) != 0 {
		t.Fatalf("a stranger's instances: %d %v", status, out)
	}
	status, out = f.do("GET", "/api/instances/"+instID+"/groups", "viewer-token", "", "")
	var http0 map[string]any
	for _, g := range out["groups"].([]any) {
		if g.(map[string]any)["id"] == "GID_http" {
			http0 = g.(map[string]any)
		}
	}
	if status != 200 || http0 == nil || http0["deadLetters"] != 1.0 || http0["lastConsumeTime"] == nil {
		t.Fatalf("groups: %d %v", status, out)
	}

	// By key, then the binary one by id: a hex preview, and its state per group.
	status, out = f.do("GET", "/api/instances/"+instID+"/messages?topic=orders&key=bin", "viewer-token", "", "")
	ms, _ := out["messages"].([]any)
	if status != 200 || len(ms) != 1 {
		t.Fatalf("by key: %d %v", status, out)
	}
	id := ms[0].(map[string]any)["id"].(string)
	status, out = f.do("GET", "/api/instances/"+instID+"/messages/"+id, "viewer-token", "", "")
	m, _ := out["message"].(map[string]any)
	body, _ := m["body"].(map[string]any)
	if status != 200 || body["hex"] == nil || body["text"] != nil || len(out["deliveries"].([]any)) != 1 {
		t.Fatalf("binary message: %d %v", status, out)
	}
	if status, out := f.do("GET", "/api/instances/"+instID+"/messages/NOTANID", "viewer-token", "", ""); status != 400 {
		t.Fatalf("bad id: %d %v", status, out)
	}
	// By time: both.
	status, out = f.do("GET", "/api/instances/"+instID+"/messages?topic=orders&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z", "viewer-token", "", "")
	if ms, _ := out["messages"].([]any); status != 200 || len(ms) != 2 {
		t.Fatalf("by time: %d %v", status, out)
	}
	status, out = f.do("GET", "/api/instances/"+instID+"/groups/GID_http/deadletters", "viewer-token", "", "")
	if ms, _ := out["messages"].([]any); status != 200 || len(ms) != 1 || ms[0].(map[string]any)["body"].(map[string]any)["text"] != "poison" {
		t.Fatalf("dead letters: %d %v", status, out)
	}
}

func TestTheConsoleServesItsPagesWithoutATokenAndNothingFromElsewhere(t *testing.T) {
	f := newAPIFixture(t)
	for _, path := range []string{"/", "/app.js", "/style.css"} {
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 || !strings.Contains(rec.Header().Get("Content-Security-Policy"), "default-src 'self'") {
			t.Fatalf("%s: %d, CSP %q", path, rec.Code, rec.Header().Get("Content-Security-Policy"))
		}
		if bytes.Contains(rec.Body.Bytes(), []byte("http://")) || bytes.Contains(rec.Body.Bytes(), []byte("https://")) {
			t.Errorf("%s refers to another origin", path)
		}
	}
}

func TestBodyViews(t *testing.T) {
	for _, c := range []struct {
		body      []byte
		text, hex bool
		truncated bool
	}{
		{[]byte("hello\nworld\t!"), true, false, false},
		{[]byte("héllo"), true, false, false},
		{[]byte{0xff, 0xfe}, false, true, false},
		{[]byte("nul\x00inside"), false, true, false},
		{bytes.Repeat([]byte("é"), textPreview), true, false, true},
		{bytes.Repeat([]byte{0}, hexPreview+1), false, true, true},
	} {
		v := viewBody(c.body, textPreview)
		if (v.Text != "") != c.text || (v.Hex != "") != c.hex || v.Truncated != c.truncated || v.Size != len(c.body) {
			t.Errorf("%q: %+v", c.body[:min(len(c.body), 16)], v)
		}
		if len(v.Text) > textPreview {
			t.Errorf("text of %d bytes", len(v.Text))
		}
	}
}
