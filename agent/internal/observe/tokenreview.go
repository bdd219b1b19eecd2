package observe

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// Token review cache: an accepted token is accepted again without asking
// the API server for at most acceptTTL, and never within expiryMargin of
// its expiry.
const (
	acceptTTL    = time.Minute
	expiryMargin = 10 * time.Second
	maxCached    = 1024
	// maxReviews bounds the TokenReviews in flight: garbage tokens cannot
	// turn the port into a flood of API requests.
	maxReviews = 4
)

// NewTokenReviewer returns a Review for Options: it asks the API server
// (TokenReview, audience observeapi.TokenAudience) whether a token is
// valid, and accepts it only when it is a token of
// system:serviceaccount:<namespace>:<serviceAccount>. Accepted tokens are
// cached briefly (a minute at most, never past their expiry); refusals
// are not. The agent needs `create` on authentication.k8s.io tokenreviews.
func NewTokenReviewer(client kubernetes.Interface, namespace, serviceAccount string) func(ctx context.Context, token string) error {
	return newReviewer(client, namespace, serviceAccount).review
}

func newReviewer(client kubernetes.Interface, namespace, serviceAccount string) *reviewer {
	return &reviewer{
		client: client,
		want:   "system:serviceaccount:" + namespace + ":" + serviceAccount,
		cache:  map[[32]byte]time.Time{},
		sem:    make(chan struct{}, maxReviews),
		now:    time.Now,
	}
}

type reviewer struct {
	client kubernetes.Interface
	want   string
	sem    chan struct{}
	now    func() time.Time

	mu    sync.Mutex
	cache map[[32]byte]time.Time // sha256 of the token -> accepted until
}

func (r *reviewer) review(ctx context.Context, token string) error {
	exp, ok := jwtExpiry(token)
	if !ok {
		return fmt.Errorf("%w: the token is not a service account token (a JWT)", ErrUnauthenticated)
	}
	now := r.now()
	if !exp.IsZero() && now.After(exp) {
		return fmt.Errorf("%w: the token expired at %s", ErrUnauthenticated, exp.UTC().Format(time.RFC3339))
	}
	sum := sha256.Sum256([]byte(token))
	r.mu.Lock()
	until, hit := r.cache[sum]
	r.mu.Unlock()
	if hit && now.Before(until) {
		return nil
	}

	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	case <-ctx.Done():
		return ctx.Err()
	}
	tr, err := r.client.AuthenticationV1().TokenReviews().Create(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: []string{observeapi.TokenAudience}},
	}, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("token review: the agent may not create tokenreviews (authentication.k8s.io): %w", err)
		}
		return fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	switch {
	case !st.Authenticated:
		msg := "the API server does not accept the token"
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return fmt.Errorf("%w: %s", ErrUnauthenticated, msg)
	case !slices.Contains(st.Audiences, observeapi.TokenAudience):
		return fmt.Errorf("%w: the token's audiences %v lack %q", ErrUnauthenticated, st.Audiences, observeapi.TokenAudience)
	case st.User.Username != r.want:
		return fmt.Errorf("%w: a token of %s; want one of %s", ErrUnauthenticated, st.User.Username, r.want)
	}

	until = now.Add(acceptTTL)
	if !exp.IsZero() && exp.Add(-expiryMargin).Before(until) {
		until = exp.Add(-expiryMargin)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= maxCached {
		for k, t := range r.cache {
			if !now.Before(t) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= maxCached {
			clear(r.cache)
		}
	}
	r.cache[sum] = until
	return nil
}

// jwtExpiry reads the exp claim of a JWT without verifying it (the API
// server verifies the token; this only bounds how long an accepted token
// is cached). ok is false when token is not a JWT; exp is zero when it
// has no exp claim.
func jwtExpiry(token string) (exp time.Time, ok bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}, false
	}
	if claims.Exp == nil {
		return time.Time{}, true
	}
	sec, err := claims.Exp.Int64()
	if err != nil {
		f, ferr := claims.Exp.Float64()
		if ferr != nil {
			return time.Time{}, false
		}
		sec = int64(f)
	}
	return time.Unix(sec, 0), true
}
