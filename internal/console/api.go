package console

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// API bounds. Each answer is bounded in what it lists and in the bytes of the
// messages it shows; the broker bounds what it reads to answer (one read's
// MaxReadBytes of records).
const (
	maxInstances   = 256
	maxTopics      = 1024 // an instance's 256 topics, and its groups' retry and dead-letter topics
	maxGroups      = 256
	maxByKey       = 16
	maxInRange     = 100
	maxDeadLetters = 32
	maxRedriveIDs  = 64
	maxBodyBytes   = 64 << 10 // a POST's JSON
	// Text bodies are shown up to textPreview bytes in a message's view and
	// listPreview in lists; binary ones as hex of their first hexPreview bytes.
	textPreview = 16 << 10
	listPreview = 256
	hexPreview  = 512
	// maxMessageReads bounds the requests that read message bodies at once, so
	// what they hold in memory is a few reads' worth whatever the callers do.
	maxMessageReads = 4
)

type api struct {
	b       Broker
	objects client.Reader
	reviews *cachingReviewer
	log     logr.Logger
	reads   chan struct{}
}

// routes is the console's API, one line a route; each handler names what it needs.
func (a *api) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/whoami", a.whoami)
	mux.HandleFunc("GET /api/instances", a.instances)
	mux.HandleFunc("GET /api/instances/{instance}/topics", a.topics)
	mux.HandleFunc("GET /api/instances/{instance}/groups", a.groups)
	mux.HandleFunc("GET /api/instances/{instance}/messages", a.messages)
	mux.HandleFunc("GET /api/instances/{instance}/messages/{id}", a.message)
	mux.HandleFunc("GET /api/instances/{instance}/groups/{group}/deadletters", a.deadLetters)
	mux.HandleFunc("POST /api/instances/{instance}/groups/{group}/redrive", a.redrive)
	mux.HandleFunc("POST /api/instances/{instance}/groups/{group}/reset", a.reset)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NotFound", "no such API")
	})
}

// apiError is an answer other than 200, with the code the page shows.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]string{"code": code, "message": message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers err: an *apiError as it says, a broker error by its kind, anything
// else as an internal error, logged (the answer does not say more).
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, broker.ErrInstanceNotFound), errors.Is(err, broker.ErrTopicNotFound),
		errors.Is(err, broker.ErrGroupNotFound), errors.Is(err, broker.ErrMessageNotFound):
		ae = errorf(http.StatusNotFound, "NotFound", "%v", err)
	case errors.Is(err, broker.ErrInvalidArgument), errors.Is(err, broker.ErrWrongProtocol):
		ae = errorf(http.StatusBadRequest, "BadRequest", "%v", err)
	case errors.Is(err, broker.ErrThrottled), errors.Is(err, broker.ErrClosed):
		ae = errorf(http.StatusServiceUnavailable, "Unavailable", "%v", err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		ae = errorf(http.StatusServiceUnavailable, "Unavailable", "the request took too long")
	default:
		a.log.Error(err, "Console request failed", "method", r.Method, "path", r.URL.Path)
		ae = errorf(http.StatusInternalServerError, "InternalError", "the request failed; the manager's log says why")
	}
	writeError(w, ae.status, ae.code, ae.message)
}

// caller authenticates the request's bearer token. Only the Authorization header
// carries it, never a cookie, so another site's page cannot make a browser send
// it: that, and writes being POSTs of JSON, is the console's CSRF defence.
func (a *api) caller(r *http.Request) (session, error) {
	token, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		return session{}, errorf(http.StatusUnauthorized, "Unauthorized", "send a Kubernetes bearer token: Authorization: Bearer <token>")
	}
	s, err := a.reviews.authenticate(r.Context(), token)
	if errors.Is(err, ErrUnauthenticated) {
		return session{}, errorf(http.StatusUnauthorized, "Unauthorized", "the apiserver does not accept this token")
	}
	return s, err
}

// require checks that the caller may have every access.
func (a *api) require(ctx context.Context, s session, access ...Access) error {
	for _, acc := range access {
		ok, err := a.reviews.authorize(ctx, s, acc)
		if err != nil {
			return err
		}
		if !ok {
			return errorf(http.StatusForbidden, "Forbidden", "%s may not %s", s.user.Name, acc)
		}
	}
	return nil
}

// target is a broker instance and the Instance object that declares it.
type target struct {
	id     string
	object types.NamespacedName
	user   string // who asked, for the log of writes
}

// instance resolves the request's instance to the Instance that declares it: the
// one whose UID the broker holds as the instance's owner, as the Instance
// controller declares it. An instance no Instance declares is shown to no one.
func (a *api) instance(ctx context.Context, id string) (target, error) {
	for _, info := range a.b.Instances() {
		if info.ID != id {
			continue
		}
		obj, ok, err := a.instanceObject(ctx, info)
		if err != nil {
			return target{}, err
		}
		if ok {
			return target{id: id, object: obj}, nil
		}
	}
	return target{}, errorf(http.StatusNotFound, "NotFound", "no instance %q declared by an Instance", id)
}

func (a *api) instanceObject(ctx context.Context, info broker.InstanceInfo) (types.NamespacedName, bool, error) {
	var list mqv1alpha1.InstanceList
	if err := a.objects.List(ctx, &list); err != nil {
		return types.NamespacedName{}, false, fmt.Errorf("failed to list Instances: %w", err)
	}
	for _, inst := range list.Items {
		if string(inst.UID) == info.Owner {
			return types.NamespacedName{Namespace: inst.Namespace, Name: inst.Name}, true, nil
		}
	}
	return types.NamespacedName{}, false, nil
}

// readInstance authenticates the caller and resolves the request's instance,
// checking that the caller may get the Instance and, in its namespace, every
// resource of what.
func (a *api) readInstance(r *http.Request, what ...string) (target, error) {
	s, err := a.caller(r)
	if err != nil {
		return target{}, err
	}
	t, err := a.instance(r.Context(), r.PathValue("instance"))
	if err != nil {
		return target{}, err
	}
	need := []Access{{Verb: "get", Resource: "instances", Namespace: t.object.Namespace, Name: t.object.Name}}
	for _, res := range what {
		need = append(need, Access{Verb: "get", Resource: res, Namespace: t.object.Namespace})
	}
	return t, a.require(r.Context(), s, need...)
}

func (a *api) whoami(w http.ResponseWriter, r *http.Request) {
	s, err := a.caller(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"user": s.user.Name, "groups": s.user.Groups})
}

type instanceView struct {
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Topics    int    `json:"topics"`
	Groups    int    `json:"groups"`
}

// instances lists the instances whose Instance the caller may get.
func (a *api) instances(w http.ResponseWriter, r *http.Request) {
	s, err := a.caller(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var list mqv1alpha1.InstanceList
	if err := a.objects.List(r.Context(), &list); err != nil {
		a.fail(w, r, fmt.Errorf("failed to list Instances: %w", err))
		return
	}
	byUID := map[string]types.NamespacedName{}
	for _, inst := range list.Items {
		byUID[string(inst.UID)] = types.NamespacedName{Namespace: inst.Namespace, Name: inst.Name}
	}
	out := []instanceView{}
	for _, info := range a.b.Instances() {
		obj, ok := byUID[info.Owner]
		if !ok {
			continue
		}
		allowed, err := a.reviews.authorize(r.Context(), s, Access{Verb: "get", Resource: "instances", Namespace: obj.Namespace, Name: obj.Name})
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if allowed {
			out = append(out, instanceView{ID: info.ID, Namespace: obj.Namespace, Name: obj.Name, Topics: info.Topics, Groups: info.Groups})
		}
		if len(out) == maxInstances {
			break
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"instances": out})
}

type topicView struct {
	Name           string `json:"name"`
	Type           string `json:"type"`
	Queues         int    `json:"queues"`
	System         bool   `json:"system"`
	Messages       int64  `json:"messages"`
	Bytes          int64  `json:"bytes"`
	Published      uint64 `json:"published"`
	PublishedBytes uint64 `json:"publishedBytes"`
}

// topics lists the instance's topics with their counters; the page turns the
// published counts of successive answers into rates, by the answers' time.
func (a *api) topics(w http.ResponseWriter, r *http.Request) {
	t, err := a.readInstance(r, "topics")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	topics, err := a.b.Topics(t.id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]topicView, 0, min(len(topics), maxTopics))
	for _, ti := range topics[:min(len(topics), maxTopics)] {
		out = append(out, topicView{Name: ti.Name, Type: string(ti.Type), Queues: ti.Queues, System: ti.System, Messages: ti.Messages,
			Bytes: ti.Bytes, Published: ti.Published, PublishedBytes: ti.PublishedBytes})
	}
	writeJSON(w, http.StatusOK, map[string]any{"time": time.Now().UnixMilli(), "topics": out, "truncated": len(topics) > maxTopics})
}

type groupTopicView struct {
	Topic    string `json:"topic"`
	Backlog  int64  `json:"backlog"`
	InFlight int64  `json:"inFlight"`
}

type groupView struct {
	ID              string           `json:"id"`
	Protocol        string           `json:"protocol"`
	MaxRedeliveries int              `json:"maxRedeliveries"`
	Backlog         int64            `json:"backlog"`
	InFlight        int64            `json:"inFlight"`
	DeadLetters     int64            `json:"deadLetters"`
	LastConsumeTime *time.Time       `json:"lastConsumeTime,omitempty"`
	Delivered       uint64           `json:"delivered"`
	Redelivered     uint64           `json:"redelivered"`
	Acked           uint64           `json:"acked"`
	DeadLettered    uint64           `json:"deadLettered"`
	Topics          []groupTopicView `json:"topics"`
}

// groups lists the instance's groups with their consumption.
func (a *api) groups(w http.ResponseWriter, r *http.Request) {
	t, err := a.readInstance(r, "consumergroups")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	groups, err := a.b.Groups(t.id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := []groupView{}
	for _, g := range groups[:min(len(groups), maxGroups)] {
		s, err := a.b.GroupStats(t.id, g.ID)
		if errors.Is(err, broker.ErrGroupNotFound) {
			continue // deleted since it was listed
		} else if err != nil {
			a.fail(w, r, err)
			return
		}
		v := groupView{ID: g.ID, Protocol: string(s.Protocol), MaxRedeliveries: s.MaxRedeliveries, DeadLetters: s.DeadLetters,
			Delivered: s.Delivered, Redelivered: s.Redelivered, Acked: s.Acked, DeadLettered: s.DeadLettered, Topics: []groupTopicView{}}
		if !s.LastConsumeTime.IsZero() {
			v.LastConsumeTime = &s.LastConsumeTime
		}
		for _, gt := range s.Topics {
			v.Backlog += gt.Backlog
			v.InFlight += gt.InFlight
			v.Topics = append(v.Topics, groupTopicView{Topic: gt.Topic, Backlog: gt.Backlog, InFlight: gt.InFlight})
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, map[string]any{"time": time.Now().UnixMilli(), "groups": out, "truncated": len(groups) > maxGroups})
}

// bodyView is a message body as the page shows it: text, or a hex preview of a
// binary body, cut to a preview's length.
type bodyView struct {
	Size      int    `json:"size"`
	Text      string `json:"text,omitempty"`
	Hex       string `json:"hex,omitempty"`
	Truncated bool   `json:"truncated"`
}

func viewBody(body []byte, textMax int) bodyView {
	v := bodyView{Size: len(body)}
	if isText(body) {
		cut := min(len(body), textMax)
		for cut > 0 && cut < len(body) && !utf8.RuneStart(body[cut]) {
			cut--
		}
		v.Text, v.Truncated = string(body[:cut]), cut < len(body)
		return v
	}
	n := min(len(body), hexPreview)
	v.Hex, v.Truncated = hex.Dump(body[:n]), n < len(body)
	return v
}

// isText says whether a body reads as text: valid UTF-8 without control
// characters other than white space.
func isText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < ' ' && r != '\n' && r != '\r' && r != '\t' || r == 0x7f {
			return false
		}
	}
	return true
}

type messageView struct {
	ID             string            `json:"id"`
	Topic          string            `json:"topic"`
	Queue          int               `json:"queue"`
	Offset         int64             `json:"offset"`
	StoreTime      time.Time         `json:"storeTime"`
	BornTime       *time.Time        `json:"bornTime,omitempty"`
	DeliverAt      *time.Time        `json:"deliverAt,omitempty"`
	Tag            string            `json:"tag,omitempty"`
	Keys           []string          `json:"keys,omitempty"`
	ShardingKey    string            `json:"shardingKey,omitempty"`
	ReconsumeTimes int32             `json:"reconsumeTimes"`
	Properties     map[string]string `json:"properties,omitempty"`
	BodyMD5        string            `json:"bodyMD5"`
	Body           bodyView          `json:"body"`
}

func viewMessage(m broker.StoredMessage, textMax int) messageView {
	v := messageView{ID: m.ID, Topic: m.Topic, Queue: m.Queue, Offset: m.Offset, StoreTime: m.StoreTime, Tag: m.Tag, Keys: m.Keys,
		ShardingKey: m.ShardingKey, ReconsumeTimes: m.ReconsumeTimes, Properties: m.Properties, BodyMD5: m.BodyMD5,
		Body: viewBody(m.Body, textMax)}
	if !m.BornAt.IsZero() {
		v.BornTime = &m.BornAt
	}
	if !m.DeliverAt.IsZero() {
		v.DeliverAt = &m.DeliverAt
	}
	return v
}

func viewMessages(ms []broker.StoredMessage) []messageView {
	out := make([]messageView, 0, len(ms))
	for _, m := range ms {
		out = append(out, viewMessage(m, listPreview))
	}
	return out
}

// readMessages runs a read of message bodies among at most maxMessageReads at once.
func (a *api) readMessages(ctx context.Context, read func() error) error {
	select {
	case a.reads <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-a.reads }()
	return read()
}

type deliveryView struct {
	Group           string     `json:"group"`
	Protocol        string     `json:"protocol"`
	State           string     `json:"state"`
	ConsumedTimes   int        `json:"consumedTimes,omitempty"`
	NextVisibleTime *time.Time `json:"nextVisibleTime,omitempty"`
}

// message shows one message with its state per group: a topic's data and the
// groups' progress, so it needs get on both.
func (a *api) message(w http.ResponseWriter, r *http.Request) {
	t, err := a.readInstance(r, "topics", "consumergroups")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var st broker.MessageState
	err = a.readMessages(r.Context(), func() (err error) {
		st, err = a.b.MessageState(t.id, r.PathValue("id"))
		return err
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ds := make([]deliveryView, 0, len(st.Deliveries))
	for _, d := range st.Deliveries {
		v := deliveryView{Group: d.Group, Protocol: string(d.Protocol), State: string(d.State), ConsumedTimes: d.ConsumedTimes}
		if !d.NextVisibleTime.IsZero() {
			v.NextVisibleTime = &d.NextVisibleTime
		}
		ds = append(ds, v)
	}
	writeJSON(w, http.StatusOK, map[string]any{"message": viewMessage(st.Message, textPreview), "deliveries": ds})
}

// messages looks up a topic's messages by key (?topic=&key=) or by the time they
// were stored (?topic=&from=&to=, RFC 3339).
func (a *api) messages(w http.ResponseWriter, r *http.Request) {
	t, err := a.readInstance(r, "topics")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	topic, key := q.Get("topic"), q.Get("key")
	if topic == "" {
		a.fail(w, r, errorf(http.StatusBadRequest, "BadRequest", "name a topic"))
		return
	}
	if key != "" {
		var ms []broker.StoredMessage
		err := a.readMessages(r.Context(), func() (err error) {
			ms, err = a.b.MessagesByKey(r.Context(), t.id, topic, broker.KeyQuery{Key: key, Max: maxByKey})
			return err
		})
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"messages": viewMessages(ms), "truncated": len(ms) == maxByKey})
		return
	}
	from, err1 := time.Parse(time.RFC3339, q.Get("from"))
	to, err2 := time.Parse(time.RFC3339, q.Get("to"))
	if err1 != nil || err2 != nil {
		a.fail(w, r, errorf(http.StatusBadRequest, "BadRequest", "give a key, or a time range as from and to in RFC 3339"))
		return
	}
	var res broker.RangeResult
	err = a.readMessages(r.Context(), func() (err error) {
		res, err = a.b.MessagesBetween(t.id, topic, from, to, maxInRange)
		return err
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": viewMessages(res.Messages), "truncated": res.Truncated})
}

// deadLetters lists a group's dead letters from ?offset= on.
func (a *api) deadLetters(w http.ResponseWriter, r *http.Request) {
	t, err := a.readInstance(r, "consumergroups")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	offset := int64(0)
	if s := r.URL.Query().Get("offset"); s != "" {
		if offset, err = strconv.ParseInt(s, 10, 64); err != nil || offset < 0 {
			a.fail(w, r, errorf(http.StatusBadRequest, "BadRequest", "offset %q is not a non-negative integer", s))
			return
		}
	}
	var ms []broker.StoredMessage
	var next int64
	err = a.readMessages(r.Context(), func() (err error) {
		ms, next, err = a.b.DeadLetters(t.id, r.PathValue("group"), offset, maxDeadLetters)
		return err
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": viewMessages(ms), "next": next})
}

// writeGroup authenticates a write to a group and checks that the caller may
// update the ConsumerGroup that declares it (the one whose UID the broker holds as
// its owner); a group no ConsumerGroup declares (created on first use) needs
// update on every ConsumerGroup of the Instance's namespace. It also holds writes
// to POSTs of JSON, which a form on another site cannot send.
func (a *api) writeGroup(w http.ResponseWriter, r *http.Request, body any) (target, string, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return target{}, "", errorf(http.StatusUnsupportedMediaType, "UnsupportedMediaType", "send the request as application/json")
	}
	s, err := a.caller(r)
	if err != nil {
		return target{}, "", err
	}
	t, err := a.instance(r.Context(), r.PathValue("instance"))
	if err != nil {
		return target{}, "", err
	}
	ns := t.object.Namespace
	if err := a.require(r.Context(), s, Access{Verb: "get", Resource: "instances", Namespace: ns, Name: t.object.Name}); err != nil {
		return target{}, "", err
	}
	groupID := r.PathValue("group")
	info, err := a.b.Group(t.id, groupID)
	if err != nil {
		return target{}, "", err
	}
	need := Access{Verb: "update", Resource: "consumergroups", Namespace: ns}
	var groups mqv1alpha1.ConsumerGroupList
	if err := a.objects.List(r.Context(), &groups); err != nil {
		return target{}, "", fmt.Errorf("failed to list ConsumerGroups: %w", err)
	}
	for _, g := range groups.Items {
		if string(g.UID) == info.Owner {
			need.Namespace, need.Name = g.Namespace, g.Name
		}
	}
	if err := a.require(r.Context(), s, need); err != nil {
		return target{}, "", err
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(body); err != nil {
		return target{}, "", errorf(http.StatusBadRequest, "BadRequest", "the body is not the JSON expected: %v", err)
	}
	t.user = s.user.Name
	return t, groupID, nil
}

// redrive re-drives dead letters by id: {"ids": [...]}.
func (a *api) redrive(w http.ResponseWriter, r *http.Request) {
	var req struct {
		IDs []string `json:"ids"`
	}
	t, group, err := a.writeGroup(w, r, &req)
	if err == nil && (len(req.IDs) == 0 || len(req.IDs) > maxRedriveIDs) {
		err = errorf(http.StatusBadRequest, "BadRequest", "name 1 to %d dead letters", maxRedriveIDs)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	n, err := a.b.Redrive(r.Context(), t.id, group, req.IDs)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("Re-drove dead letters from the console", "user", t.user, "instance", t.id, "group", group, "count", n)
	writeJSON(w, http.StatusOK, map[string]any{"redriven": n})
}

// reset moves a group's consumption of a topic to a time: {"topic": ..., "time":
// RFC 3339}.
func (a *api) reset(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Topic string `json:"topic"`
		Time  string `json:"time"`
	}
	t, group, err := a.writeGroup(w, r, &req)
	var ts time.Time
	if err == nil {
		if ts, err = time.Parse(time.RFC3339, req.Time); err != nil || strings.TrimSpace(req.Topic) == "" {
			err = errorf(http.StatusBadRequest, "BadRequest", "name a topic and a time in RFC 3339")
		}
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	offsets, err := a.b.ResetOffsets(t.id, group, req.Topic, ts)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.log.Info("Reset a group's consumption from the console", "user", t.user, "instance", t.id, "group", group, "topic", req.Topic, "time", ts)
	writeJSON(w, http.StatusOK, map[string]any{"offsets": offsets})
}
