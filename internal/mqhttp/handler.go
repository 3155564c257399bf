package mqhttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/membudget"
)

// Request limits. A body of broker.MaxBodySize can grow sixfold when escaped ("&"
// becomes "&amp;" and worse), plus the envelope; bigger requests are refused before
// they are read in full.
const (
	maxRequestBytes = 6*broker.MaxBodySize + 64<<10
	// maxWait bounds a long poll: the SDKs time out after 33 to 35 s.
	maxWait = 30 * time.Second
)

// Broker is what the endpoint needs of the broker.
type Broker interface {
	Credentials
	Publish(ctx context.Context, instanceID, topic string, msg broker.Message) (broker.PublishResult, error)
	Pop(ctx context.Context, instanceID, topic string, req broker.PopRequest) ([]broker.Delivery, error)
	PopHalf(ctx context.Context, instanceID, topic, group string, max int, wait time.Duration) ([]broker.Delivery, error)
	Ack(instanceID, topic, group string, handles []string) ([]error, error)
	EndTransaction(instanceID, topic, handle string, commit bool) error
	AcquireConnection(instanceID string) (release func(), err error)
	// NoteAuthFailure and NoteThrottled count refusals for metrics.
	NoteAuthFailure(instanceID string)
	NoteThrottled(instanceID string)
}

// handler serves the mq-http API: one resource, /topics/{topic}/messages, whose
// operation is chosen by method and the trans parameter.
type handler struct {
	broker Broker
	now    func() time.Time
	// memory bounds what requests hold; memoryWait bounds how long one waits for
	// it, leaving the rest of the write timeout for its answer.
	memory     *membudget.Shares
	memoryWait time.Duration
	// bodies recycles the buffers of small bodies (pooledBody), answers those
	// of consume answers (pooledAnswer).
	bodies, answers sync.Pool
}

// newHandler returns the handler of a server with limits lim (defaults applied).
func newHandler(b Broker, now func() time.Time, lim Limits) *handler {
	return &handler{broker: b, now: now, memory: membudget.NewShares(lim.Memory, lim.InstanceMemory),
		memoryWait: min(10*time.Second, lim.WriteTimeout/4)}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	requestID := newRequestID()
	fail := func(e *Error) { writeError(w, r, requestID, e) }
	// An answer given before the body is read closes the connection. Otherwise
	// net/http reads away up to 256 KiB of the unread body before it writes the
	// answer: the server would read an unauthenticated client's body after all,
	// and one that never sends it would hold the connection for the ReadTimeout.
	refuse := func(e *Error) {
		if r.ContentLength != 0 {
			w.Header().Set("Connection", "close")
		}
		fail(e)
	}

	topic, ok := topicFromPath(r.URL.EscapedPath())
	if !ok {
		refuse(&Error{http.StatusNotFound, "InvalidRequestURL", "The resource is /topics/{TopicName}/messages."})
		return
	}
	// Nothing of the body is read before the request is known to be signed by a
	// key and to declare a size within the limit: an unauthenticated client holds
	// no more than its headers. The signature covers the headers (Content-MD5
	// among them), and the body is checked against Content-MD5 once read.
	instanceID, e := authenticate(r, h.broker, h.now())
	if e != nil {
		h.broker.NoteAuthFailure(instanceID)
		refuse(e)
		return
	}
	// HTTP connections carry requests of any instance, so the instance's
	// connection quota counts its requests in progress (long polls hold one each).
	release, err := h.broker.AcquireConnection(instanceID)
	if err != nil {
		refuse(brokerError(err))
		return
	}
	defer release()
	if r.ContentLength > maxRequestBytes {
		refuse(&Error{http.StatusRequestEntityTooLarge, "InvalidArgument", "The request is larger than the message size limit allows."})
		return
	}
	if r.ContentLength < 0 {
		// Chunked: a size the server cannot bound before reading. The SDKs
		// always send Content-Length.
		refuse(&Error{http.StatusLengthRequired, "MissingContentLength", "A request body needs a Content-Length."})
		return
	}
	// What the request holds, its body then its answer, is the instance's and
	// the server's memory, taken before it is allocated and given back when the
	// request ends, its answer written.
	mem := h.memory.Hold(instanceID, time.Now().Add(h.memoryWait), r.Context().Done())
	mem.Refused = func() { h.broker.NoteThrottled(instanceID) }
	defer mem.Release()
	body, err := h.readBody(r.Context(), r.Body, r.ContentLength, mem)
	defer h.recycleBody(body)
	switch {
	case errors.Is(err, membudget.ErrNoMemory):
		refuse(brokerError(err)) // nothing of the body read
		return
	case err != nil:
		fail(&Error{http.StatusBadRequest, "InvalidArgument", "The request body could not be read."})
		return
	}
	if e := checkContentMD5(r, body); e != nil {
		fail(e)
		return
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		fail(&Error{http.StatusBadRequest, "InvalidQueryString", "The query string could not be parsed."})
		return
	}
	// A key authenticates for its own instance only; a request that names none is
	// for the key's instance.
	if ns := query.Get("ns"); ns != "" && ns != instanceID {
		fail(&Error{http.StatusForbidden, "AccessDenied", fmt.Sprintf("The AccessKey does not belong to instance %q.", ns)})
		return
	}
	req := request{w: w, r: r, id: requestID, instance: instanceID, topic: topic, query: query, body: body, mem: mem}
	switch trans := query.Get("trans"); {
	case r.Method == http.MethodPost && trans == "":
		h.publish(&req)
	case r.Method == http.MethodGet && (trans == "" || trans == "order" || trans == "pop"):
		h.consume(&req, trans)
	case r.Method == http.MethodDelete && (trans == "" || trans == "commit" || trans == "rollback"):
		h.ack(&req, trans)
	default:
		fail(invalidArgument(fmt.Sprintf("%s with trans=%q is not an operation of this API.", r.Method, trans)))
	}
}

// initialBodyBuffer is what a body's buffer starts at: a body up to it takes one
// allocation of its size.
const initialBodyBuffer = 64 << 10

// readBody reads the n bytes of a body. The declared size is taken from mem
// first, whole: a request either gets all it may need or waits holding nothing,
// so that many large bodies of a tenant never each hold a part of its budget and
// all wait for more. The buffer then grows, doubling, only as the bytes arrive:
// a client that declares the limit and sends little holds little memory.
func (h *handler) readBody(ctx context.Context, r io.Reader, n int64, mem *membudget.Hold) ([]byte, error) {
	if err := mem.Take(ctx, int(n)); err != nil {
		return nil, err
	}
	var b []byte
	if n <= pooledBody {
		if p, ok := h.bodies.Get().(*[]byte); ok {
			b = (*p)[:0]
		} else {
			b = make([]byte, 0, pooledBody)
		}
	} else {
		b = make([]byte, 0, min(n, initialBodyBuffer))
	}
	for int64(len(b)) < n {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), min(n, 2*int64(len(b))))
			copy(nb, b)
			b = nb
		}
		m, err := r.Read(b[len(b):min(int64(cap(b)), n)]) // never past the declared size
		b = b[:len(b)+m]
		switch {
		case err == io.EOF && int64(len(b)) < n:
			return nil, io.ErrUnexpectedEOF
		case err != nil && err != io.EOF:
			return nil, err
		}
	}
	return b, nil
}

// pooledBody is the largest body read into a recycled buffer: a publish of a
// message up to about 3 KiB, and every ack. Nothing keeps a body past its request
// (the parsers copy what they return), so its buffer serves the next one.
const pooledBody = 4 << 10

// recycleBody gives a body's buffer back once its request has been answered.
func (h *handler) recycleBody(b []byte) {
	if cap(b) == pooledBody {
		h.bodies.Put(&b)
	}
}

// pooledAnswer is the largest consume answer whose buffer is kept for the next:
// 16 messages of up to about 12 KiB. The answer is written before its buffer is
// given back, and net/http keeps none of what it is handed.
const pooledAnswer = 256 << 10

// answerBuffer returns an empty buffer for a consume answer.
func (h *handler) answerBuffer() []byte {
	if p, ok := h.answers.Get().(*[]byte); ok {
		return (*p)[:0]
	}
	return nil
}

// recycleAnswer gives an answer's buffer back once it is written.
func (h *handler) recycleAnswer(b []byte) {
	if cap(b) <= pooledAnswer {
		h.answers.Put(&b)
	}
}

// request is one authenticated request.
type request struct {
	w        http.ResponseWriter
	r        *http.Request
	id       string
	instance string
	topic    string
	query    url.Values
	body     []byte
	mem      *membudget.Hold
}

func (q *request) fail(e *Error) { writeError(q.w, q.r, q.id, e) }

// reply writes an XML body with status.
func (q *request) reply(status int, body []byte) {
	setRequestID(q.w, q.id)
	q.w.Header().Set("Content-Type", "text/xml;charset=utf-8")
	q.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	q.w.WriteHeader(status)
	_, _ = q.w.Write(body)
}

func (h *handler) publish(q *request) {
	msg, e := parsePublish(q.body, h.now())
	if e != nil {
		q.fail(e)
		return
	}
	res, err := h.broker.Publish(broker.WithWire(q.r.Context(), broker.WireHTTP), q.instance, q.topic, msg)
	if err != nil {
		q.fail(brokerError(err))
		return
	}
	q.reply(http.StatusCreated, appendPublished(make([]byte, 0, 256), res))
}

func (h *handler) consume(q *request, trans string) {
	group := q.query.Get("consumer")
	if group == "" {
		q.fail(invalidArgument("The consumer parameter is required."))
		return
	}
	// Choices where the SDKs disagree: numOfMessages above 16 is clamped (Python
	// sends what its caller asked for), below 1 or not a number is refused;
	// waitseconds above 30 is clamped, 0 or absent is a short poll.
	n, err := strconv.Atoi(q.query.Get("numOfMessages"))
	if err != nil || n < 1 {
		q.fail(invalidArgument("The value of numOfMessages should between 1 and 16."))
		return
	}
	n = min(n, broker.MaxPopMessages)
	var wait time.Duration
	if v := q.query.Get("waitseconds"); v != "" {
		s, err := strconv.Atoi(v)
		if err != nil || s < 0 {
			q.fail(invalidArgument("The value of waitseconds should between 0 and 30."))
			return
		}
		// Bounded in seconds first: a Duration of that many seconds can overflow.
		wait = time.Duration(min(s, int(maxWait/time.Second))) * time.Second
	}
	var invisible time.Duration
	if v := q.r.Header.Get(InvisibleSecondsHeader); v != "" {
		s, err := strconv.Atoi(v)
		if err != nil || s < 1 || s > int(maxInvisible/time.Second) {
			q.fail(invalidArgument("The value of " + InvisibleSecondsHeader + " should between 1 and 43200."))
			return
		}
		invisible = time.Duration(s) * time.Second
	}
	var progress *broker.WorkerProgress
	if v := q.r.Header.Get(ProgressHeader); v != "" {
		var ok bool
		if progress, ok = parseProgress(v); !ok {
			q.fail(invalidArgument("The value of " + ProgressHeader + " should be a worker name and two counts, separated by spaces."))
			return
		}
	}
	var ds []broker.Delivery
	// The records read are the request's memory until the answer is written.
	ctx := broker.WithReadBudget(q.r.Context(), q.mem)
	if trans == "pop" {
		ds, err = h.broker.PopHalf(ctx, q.instance, q.topic, group, n, wait)
	} else {
		filter, ferr := broker.ParseTagFilter(q.query.Get("tag"))
		if ferr != nil {
			q.fail(brokerError(ferr))
			return
		}
		ds, err = h.broker.Pop(ctx, q.instance, q.topic, broker.PopRequest{
			Group: group, Max: n, Wait: wait, Filter: filter, Orderly: trans == "order", Invisibility: invisible,
			Progress: progress,
		})
	}
	switch {
	case err != nil:
		q.fail(brokerError(err))
	case len(ds) == 0:
		// "Nothing to consume" is an error, never an empty 200: Node cannot parse one.
		q.fail(&Error{http.StatusNotFound, "MessageNotExist", "Message not exist."})
	default:
		// From here the answer is what the request holds, in place of the
		// records (no longer referenced): accounted for, so that the instance's
		// next reads wait while it is written.
		answer := appendMessages(h.answerBuffer(), ds)
		ds = nil
		q.mem.Release()
		q.mem.Charge(len(answer))
		q.reply(http.StatusOK, answer)
		h.recycleAnswer(answer)
	}
}

func (h *handler) ack(q *request, trans string) {
	hb, e := decodeHandles(q.body)
	if e != nil {
		q.fail(e)
		return
	}
	if len(hb.Handles) == 0 || len(hb.Handles) > maxHandles {
		q.fail(invalidArgument("A request acknowledges 1 to 16 receipt handles."))
		return
	}
	var failed []handleError
	if trans == "" {
		group := q.query.Get("consumer")
		if group == "" {
			q.fail(invalidArgument("The consumer parameter is required."))
			return
		}
		errs, err := h.broker.Ack(q.instance, q.topic, group, hb.Handles)
		if err != nil {
			q.fail(brokerError(err))
			return
		}
		for i, err := range errs {
			if err != nil {
				failed = append(failed, handleError{hb.Handles[i], handleErr(err)})
			}
		}
	} else {
		// The half message is found from its handle alone: the Go SDK sends commit and
		// rollback with an empty consumer when the instance id is empty.
		for _, handle := range hb.Handles {
			err := h.broker.EndTransaction(q.instance, q.topic, handle, trans == "commit")
			switch {
			case errors.Is(err, broker.ErrHandleExpired), errors.Is(err, broker.ErrInvalidHandle):
				failed = append(failed, handleError{handle, handleErr(err)})
			case err != nil:
				q.fail(brokerError(err))
				return
			}
		}
	}
	if len(failed) > 0 {
		// Handle problems are reported only in the <Errors> list form: the Go
		// samples assume it on ack, commit and rollback, and panic without it.
		q.reply(http.StatusNotFound, appendHandleErrors(nil, failed))
		return
	}
	setRequestID(q.w, q.id)
	q.w.WriteHeader(http.StatusNoContent)
}

// handleErr is the per-handle code the SDKs expect.
func handleErr(err error) *Error {
	if errors.Is(err, broker.ErrHandleExpired) {
		return &Error{http.StatusNotFound, "MessageNotExist", "Message not exist."}
	}
	return &Error{http.StatusNotFound, "ReceiptHandleError", "The receipt handle you provide is not valid."}
}

// brokerError maps a broker error to the protocol's. Choices where the real
// service's answer is unknown: a group of the other protocol and a message that
// does not fit its topic are 400 InvalidArgument, with the broker's explanation.
func brokerError(err error) *Error {
	switch {
	case errors.Is(err, broker.ErrTopicNotFound):
		return &Error{http.StatusNotFound, "TopicNotExist", "The topic you provided does not exist."}
	case errors.Is(err, broker.ErrGroupNotFound):
		return &Error{http.StatusNotFound, "SubscriptionNotExist", "The consumer group you provided does not exist."}
	case errors.Is(err, broker.ErrInstanceNotFound):
		return &Error{http.StatusNotFound, "InstanceNotExist", "The instance you provided does not exist."}
	case errors.Is(err, broker.ErrWrongProtocol), errors.Is(err, broker.ErrMessageType), errors.Is(err, broker.ErrInvalidArgument):
		return invalidArgument(err.Error())
	case errors.Is(err, membudget.ErrNoMemory):
		return &Error{http.StatusServiceUnavailable, "Throttling", err.Error()}
	case errors.Is(err, broker.ErrThrottled):
		// 503: the Java SDK retries it with backoff; the others surface the
		// code. The SDKs single out no throttling code of their own.
		return &Error{http.StatusServiceUnavailable, "Throttling", err.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, broker.ErrClosed):
		return &Error{http.StatusServiceUnavailable, "ServiceUnavailable", "The service is shutting down or the request was cancelled."}
	default:
		return &Error{http.StatusInternalServerError, "InternalError", "The service failed to process the request."}
	}
}

// topicFromPath extracts the topic from /topics/{topic}/messages.
func topicFromPath(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/topics/")
	if !ok {
		return "", false
	}
	topic, ok := strings.CutSuffix(rest, "/messages")
	if !ok || topic == "" || strings.Contains(topic, "/") {
		return "", false
	}
	if t, err := url.PathUnescape(topic); err == nil {
		topic = t
	}
	return topic, true
}
