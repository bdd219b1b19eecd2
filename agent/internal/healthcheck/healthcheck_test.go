package healthcheck

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-net/sluice/agent/internal/service/compile"
)

func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func get(t *testing.T, port uint16) (int, response) {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r response
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, r
}

// TestAnswersLikeKubeProxy checks status codes and bodies on loopback.
func TestAnswersLikeKubeProxy(t *testing.T) {
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), "127.0.0.1")
	defer s.Close()
	port := freePort(t)
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	if err := s.Sync([]compile.HealthCheck{{Port: port, Service: web, LocalEndpoints: 2}}); err != nil {
		t.Fatal(err)
	}
	code, r := get(t, port)
	if code != 200 || r.LocalEndpoints != 2 || r.Service.Name != "web" || r.Service.Namespace != "ns" || !r.ServiceProxyHealthy {
		t.Errorf("with local endpoints: %d %+v", code, r)
	}
	if err := s.Sync([]compile.HealthCheck{{Port: port, Service: web, LocalEndpoints: 0}}); err != nil {
		t.Fatal(err)
	}
	if code, r := get(t, port); code != 503 || r.LocalEndpoints != 0 {
		t.Errorf("without local endpoints: %d %+v", code, r)
	}
	if err := s.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/"); err == nil {
		t.Error("port still answers after its Service went away")
	}
}

func TestDuplicatePortReported(t *testing.T) {
	s := New(slog.New(slog.NewTextHandler(io.Discard, nil)), "127.0.0.1")
	defer s.Close()
	port := freePort(t)
	err := s.Sync([]compile.HealthCheck{
		{Port: port, Service: types.NamespacedName{Namespace: "a", Name: "x"}},
		{Port: port, Service: types.NamespacedName{Namespace: "b", Name: "y"}},
	})
	if err == nil || !strings.Contains(err.Error(), "claimed by both a/x and b/y") {
		t.Errorf("got %v", err)
	}
}
