package observe

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sluice-net/sluice/internal/observeapi"
)

// jwt makes a token shaped like a service account token, expiring at exp.
func jwt(name string, exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." +
		enc(fmt.Appendf(nil, `{"sub":%q,"exp":%d}`, name, exp.Unix())) + "." + enc([]byte("signature"))
}

// fakeAPI answers TokenReviews: each known token authenticates as its
// user with its audiences.
type fakeAPI struct {
	users     map[string]authv1.UserInfo
	audiences map[string][]string
	forbid    bool
	calls     atomic.Int32
}

func (f *fakeAPI) client() *fake.Clientset {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		f.calls.Add(1)
		if f.forbid {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "authentication.k8s.io", Resource: "tokenreviews"}, "",
				errors.New(`User "system:serviceaccount:sluice-system:sluice-agent" cannot create resource "tokenreviews"`))
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenReview)
		if strings.Join(tr.Spec.Audiences, ",") != observeapi.TokenAudience {
			return true, nil, fmt.Errorf("review asks for audiences %v", tr.Spec.Audiences)
		}
		out := tr.DeepCopy()
		if u, ok := f.users[tr.Spec.Token]; ok {
			out.Status = authv1.TokenReviewStatus{Authenticated: true, User: u, Audiences: f.audiences[tr.Spec.Token]}
		} else {
			out.Status = authv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, out, nil
	})
	return c
}

func TestTokenReviewer(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	exp := now.Add(10 * time.Minute)
	observer, agent, otherAud := jwt("observer", exp), jwt("agent", exp), jwt("aud", exp)
	soon := jwt("soon", now.Add(expiryMargin+30*time.Second))
	api := &fakeAPI{
		users: map[string]authv1.UserInfo{
			observer: {Username: "system:serviceaccount:sluice-system:sluice-observer"},
			soon:     {Username: "system:serviceaccount:sluice-system:sluice-observer"},
			agent:    {Username: "system:serviceaccount:sluice-system:sluice-agent"},
			otherAud: {Username: "system:serviceaccount:sluice-system:sluice-observer"},
		},
		audiences: map[string][]string{
			observer: {observeapi.TokenAudience}, soon: {observeapi.TokenAudience},
			agent: {observeapi.TokenAudience}, otherAud: {"https://kubernetes.default.svc"},
		},
	}
	r := newReviewer(api.client(), "sluice-system", "sluice-observer")
	r.now = func() time.Time { return now }
	review := r.review
	ctx := context.Background()

	for _, tc := range []struct {
		name, token string
		want        string // "" accepted
		calls       int32  // TokenReviews it makes
	}{
		{"the observer's token", observer, "", 1},
		{"again: cached", observer, "", 0},
		{"another service account's", agent, "sluice-agent", 1},
		{"another audience", otherAud, "audiences", 1},
		{"unknown to the API server", jwt("forged", exp), "invalid bearer token", 1},
		{"not a JWT", "hello", "not a service account token", 0},
		{"expired", jwt("old", now.Add(-time.Minute)), "expired", 0},
		{"expiring soon", soon, "", 1},
		{"expiring soon, again: cached", soon, "", 0},
	} {
		before := api.calls.Load()
		err := review(ctx, tc.token)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.want != "" && (!errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want ErrUnauthenticated with %q", tc.name, err, tc.want)
		}
		if got := api.calls.Load() - before; got != tc.calls {
			t.Errorf("%s: %d TokenReviews, want %d", tc.name, got, tc.calls)
		}
	}
	// Within expiryMargin of its expiry a token is reviewed again; past
	// acceptTTL, any token is.
	for _, tc := range []struct {
		name  string
		after time.Duration
		token string
	}{
		{"near its expiry", 30*time.Second + time.Millisecond, soon},
		{"after acceptTTL", acceptTTL + time.Millisecond, observer},
	} {
		r.now = func() time.Time { return now.Add(tc.after) }
		before := api.calls.Load()
		if err := review(ctx, tc.token); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if api.calls.Load() == before {
			t.Errorf("%s: accepted from the cache", tc.name)
		}
	}
}

func TestTokenReviewerForbidden(t *testing.T) {
	api := &fakeAPI{forbid: true}
	review := NewTokenReviewer(api.client(), "sluice-system", "sluice-observer")
	err := review(context.Background(), jwt("observer", time.Now().Add(time.Hour)))
	if err == nil || errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "may not create tokenreviews") {
		t.Errorf("forbidden review: %v, want an error naming the permission that is not ErrUnauthenticated (503)", err)
	}
}
