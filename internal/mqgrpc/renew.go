package mqgrpc

import (
	"sync"
	"time"
)

// Auto-renewed deliveries (spec 3.7). A PushConsumer receives with auto_renew and
// never extends a message's invisibility itself: the server keeps renewing it
// while the client lives, until the client acknowledges it, hands it back or
// forwards it, and maps the handle the client received onto the latest one, as
// the Apache proxy does. Renewal is the broker's ChangeInvisibility.
const (
	// renewInvisibility is the invisibility of an auto-renewed delivery that
	// names none, and of each renewal (the proxy's defaultInvisibleTimeMills).
	renewInvisibility = 60 * time.Second
	// renewAhead is how long before its end an invisibility is renewed, at
	// most (the proxy's 10 s); a shorter one is renewed at half time.
	renewAhead = 10 * time.Second
	// maxRenewal bounds how long one delivery is renewed (the proxy's 3 h).
	maxRenewal = 3 * time.Hour
	// maxRenewals bounds the deliveries renewed at once; past it, deliveries are
	// left to their invisibility.
	maxRenewals = 1 << 17
)

// renewal is one auto-renewed delivery.
type renewal struct {
	instance, topic, group, clientID string
	invisibility                     time.Duration
	started                          time.Time

	// mu is held across the broker calls that use current, so that a renewal
	// and the client's own call never race for the handle.
	mu      sync.Mutex
	current string    // the delivery's latest handle
	expiry  time.Time // when its invisibility ends
	done    bool
}

// renewals holds the auto-renewed deliveries, by the handle the client received.
type renewals struct {
	mu sync.Mutex
	m  map[string]*renewal
}

func (rs *renewals) add(handle string, r *renewal) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.m == nil {
		rs.m = map[string]*renewal{}
	}
	if len(rs.m) < maxRenewals {
		r.current = handle
		rs.m[handle] = r
	}
}

// take removes the renewal of a handle the client sends back, and returns it
// locked, or nil if the handle is not one being renewed.
func (rs *renewals) take(handle string) *renewal {
	rs.mu.Lock()
	r := rs.m[handle]
	delete(rs.m, handle)
	rs.mu.Unlock()
	if r == nil {
		return nil
	}
	r.mu.Lock()
	r.done = true
	return r
}

// due lists the renewals whose invisibility ends within their lead time.
func (rs *renewals) due(now time.Time) map[string]*renewal {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	out := map[string]*renewal{}
	for h, r := range rs.m {
		if r.expiry.Sub(now) < min(renewAhead, r.invisibility/2) {
			out[h] = r
		}
	}
	return out
}

func (rs *renewals) drop(handle string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	delete(rs.m, handle)
}

// handle returns the handle to use for one the client sent back: the latest of
// an auto-renewed delivery, which stops being renewed (its release must be
// called once the broker call is made), or the handle itself.
func (s *Server) handle(h string) (string, func()) {
	r := s.renewals.take(h)
	if r == nil {
		return h, func() {}
	}
	return r.current, r.mu.Unlock
}

// renew extends the auto-renewed deliveries about to become visible, of clients
// still alive; a delivery whose client is gone is left to its invisibility, and
// comes back to the group when it ends.
func (s *Server) renew() {
	now := time.Now()
	for h, r := range s.renewals.due(now) {
		if s.clients.get(r.instance, r.clientID) == nil || now.Sub(r.started) > maxRenewal {
			s.renewals.drop(h)
			continue
		}
		r.mu.Lock()
		if !r.done {
			next, err := s.Broker.ChangeInvisibility(r.instance, r.topic, r.group, r.current, r.invisibility)
			if err != nil {
				// Acknowledged or expired meanwhile: nothing left to renew.
				s.renewals.drop(h)
			} else {
				r.current, r.expiry = next, time.Now().Add(r.invisibility)
			}
		}
		r.mu.Unlock()
	}
}
