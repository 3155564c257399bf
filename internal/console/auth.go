package console

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
)

// ErrUnauthenticated means a bearer token belongs to no one the cluster knows.
var ErrUnauthenticated = errors.New("the token does not authenticate")

// User is who a bearer token belongs to, as the apiserver's TokenReview says.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Access is what a request needs: verb on a resource of the mq.orderly.dev API
// group, in a namespace, one object of it by name, or every one with Name empty.
type Access struct {
	Verb, Resource, Namespace, Name string
}

func (a Access) String() string {
	obj := a.Resource + "." + mqv1alpha1.GroupVersion.Group
	if a.Name != "" {
		obj += "/" + a.Name
	}
	return fmt.Sprintf("%s %s in namespace %q", a.Verb, obj, a.Namespace)
}

// Reviewer authenticates bearer tokens and authorizes what their users ask for.
// The console holds no credentials of its own: it asks the apiserver, as the
// Kubernetes dashboard and Argo CD do.
type Reviewer interface {
	// Authenticate returns the token's user, or ErrUnauthenticated.
	Authenticate(ctx context.Context, token string) (User, error)
	// Authorize says whether user may have access.
	Authorize(ctx context.Context, user User, access Access) (bool, error)
}

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// KubeReviewer reviews with the apiserver: TokenReview and SubjectAccessReview of
// authentication.k8s.io/v1 and authorization.k8s.io/v1. The manager's role needs
// create on both.
type KubeReviewer struct {
	Client kubernetes.Interface
}

// Authenticate asks the apiserver who the token belongs to.
func (k KubeReviewer) Authenticate(ctx context.Context, token string) (User, error) {
	tr, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return User{}, fmt.Errorf("failed to review the token: %w", err)
	}
	if !tr.Status.Authenticated {
		return User{}, ErrUnauthenticated
	}
	u := tr.Status.User
	extra := make(map[string][]string, len(u.Extra))
	for k, v := range u.Extra {
		extra[k] = v
	}
	return User{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra}, nil
}

// Authorize asks the apiserver whether user may have access.
func (k KubeReviewer) Authorize(ctx context.Context, user User, a Access) (bool, error) {
	extra := make(map[string]authzv1.ExtraValue, len(user.Extra))
	for k, v := range user.Extra {
		extra[k] = v
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: user.Name, UID: user.UID, Groups: user.Groups, Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{
			Namespace: a.Namespace, Verb: a.Verb, Group: mqv1alpha1.GroupVersion.Group,
			Version: mqv1alpha1.GroupVersion.Version, Resource: a.Resource, Name: a.Name,
		},
	}}
	res, err := k.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("failed to review access: %w", err)
	}
	return res.Status.Allowed, nil
}

// Review caching. Each page polls every second or two, and each poll would cost a
// TokenReview and a SubjectAccessReview or two: results are kept for reviewTTL,
// keyed by a hash of the token (never the token itself), so a revoked token or
// binding takes effect within it. The cache is bounded; past maxCached entries it
// starts over, which costs reviews, not memory.
const (
	reviewTTL = 10 * time.Second
	maxCached = 4096
	// maxReviews bounds the reviews in flight to the apiserver: a flood of made-up
	// tokens, each a cache miss, waits here rather than there.
	maxReviews = 8
)

type tokenHash [sha256.Size]byte

type cachedUser struct {
	user    User
	err     error // ErrUnauthenticated, cached too; other errors are not
	expires time.Time
}

type accessKey struct {
	token  tokenHash
	access Access
}

type cachedAccess struct {
	allowed bool
	expires time.Time
}

// cachingReviewer keeps a Reviewer's answers for reviewTTL.
type cachingReviewer struct {
	next Reviewer
	now  func() time.Time
	sem  chan struct{}

	mu     sync.Mutex
	users  map[tokenHash]cachedUser
	access map[accessKey]cachedAccess
}

func newCachingReviewer(next Reviewer, now func() time.Time) *cachingReviewer {
	return &cachingReviewer{next: next, now: now, sem: make(chan struct{}, maxReviews),
		users: map[tokenHash]cachedUser{}, access: map[accessKey]cachedAccess{}}
}

// session is one request's caller: the token's hash and its user.
type session struct {
	token tokenHash
	user  User
}

// authenticate returns the session of token.
func (c *cachingReviewer) authenticate(ctx context.Context, token string) (session, error) {
	h := tokenHash(sha256.Sum256([]byte(token)))
	now := c.now()
	c.mu.Lock()
	e, ok := c.users[h]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return session{h, e.user}, e.err
	}
	if err := c.acquire(ctx); err != nil {
		return session{}, err
	}
	u, err := c.next.Authenticate(ctx, token)
	<-c.sem
	if err != nil && !errors.Is(err, ErrUnauthenticated) {
		return session{}, err
	}
	c.mu.Lock()
	if len(c.users) >= maxCached {
		clear(c.users)
	}
	c.users[h] = cachedUser{user: u, err: err, expires: now.Add(reviewTTL)}
	c.mu.Unlock()
	return session{h, u}, err
}

// authorize says whether the session's user may have access.
func (c *cachingReviewer) authorize(ctx context.Context, s session, a Access) (bool, error) {
	k := accessKey{s.token, a}
	now := c.now()
	c.mu.Lock()
	e, ok := c.access[k]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.allowed, nil
	}
	if err := c.acquire(ctx); err != nil {
		return false, err
	}
	allowed, err := c.next.Authorize(ctx, s.user, a)
	<-c.sem
	if err != nil {
		return false, err
	}
	c.mu.Lock()
	if len(c.access) >= maxCached {
		clear(c.access)
	}
	c.access[k] = cachedAccess{allowed: allowed, expires: now.Add(reviewTTL)}
	c.mu.Unlock()
	return allowed, nil
}

func (c *cachingReviewer) acquire(ctx context.Context) error {
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bearerToken returns the token of an Authorization: Bearer header.
func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	// A token is printable ASCII; anything else is no token, and is not sent on.
	if token == "" || len(token) > maxTokenLength || slices.ContainsFunc([]byte(token), func(c byte) bool { return c <= ' ' || c > '~' }) {
		return "", false
	}
	return token, true
}

// maxTokenLength bounds a bearer token; service account tokens are about 1 KiB,
// OIDC ID tokens a few.
const maxTokenLength = 8 << 10
