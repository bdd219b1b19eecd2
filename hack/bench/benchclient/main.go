// Command benchclient is the load generator of hack/bench. It runs inside a
// pod's network namespace (localcluster exec) and talks HTTP/1.0 to an
// agnhost netexec server, one TCP connection per request, the way a
// connection-per-request client loads a Service. It tunes the pod's
// network namespace for that (tuneNamespace).
//
//	benchclient -mode conn -target IP:PORT[,IP:PORT...] -duration 5s -concurrency 2
//	    prints {"connections":..,"errors":..,"connPerSec":..,"p50us":..,"p99us":..};
//	    with several targets, each loop takes them in turn, one per connection
//	    (the pod-IP limit against the same backends a Service spreads over)
//	benchclient -mode watch -target IP:PORT -for 60s
//	    prints "UNIXNANO HOSTNAME" each time the answering backend changes,
//	    until -for has passed or its standard input ends
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

func main() {
	mode := flag.String("mode", "conn", "conn (connection rate and latency) or watch (report backend changes)")
	target := flag.String("target", "", "IP:PORT of an agnhost netexec server or a Service in front of them; conn: a comma-separated list is taken in turn")
	duration := flag.Duration("duration", 5*time.Second, "conn: how long to load")
	concurrency := flag.Int("concurrency", 2, "conn: parallel connection loops")
	watchFor := flag.Duration("for", time.Minute, "watch: how long to watch")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "benchclient: -target is required")
		os.Exit(2)
	}
	tuneNamespace()
	switch *mode {
	case "conn":
		conn(strings.Split(*target, ","), *duration, *concurrency)
	case "watch":
		watch(*target, *watchFor)
	default:
		fmt.Fprintf(os.Stderr, "benchclient: -mode %q is not conn or watch\n", *mode)
		os.Exit(2)
	}
}

// request opens a connection, asks for the hostname, reads the answer and
// closes first: the TIME_WAIT state stays with the client, whose kernel
// then reuses the port safely (tcp_tw_reuse), instead of with the server,
// where a reused client port would collide with it.
func request(target string) (string, error) {
	c, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET /hostname HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return string(body), nil
}

// tuneNamespace lets one client open tens of thousands of connections a
// second to one server: all ephemeral ports, and reuse of its own
// TIME_WAIT ports. The settings belong to the pod's network namespace.
func tuneNamespace() {
	_ = os.WriteFile("/proc/sys/net/ipv4/tcp_tw_reuse", []byte("1"), 0o644)
	_ = os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("1024 65535"), 0o644)
}

type connResult struct {
	Connections int     `json:"connections"`
	Errors      int     `json:"errors"`
	Seconds     float64 `json:"seconds"`
	ConnPerSec  float64 `json:"connPerSec"`
	P50us       float64 `json:"p50us"`
	P99us       float64 `json:"p99us"`
}

func conn(targets []string, d time.Duration, concurrency int) {
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for loop := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			myErrs := 0
			for i := loop; time.Now().Before(deadline); i++ {
				t := time.Now()
				if _, err := request(targets[i%len(targets)]); err != nil {
					myErrs++
					continue
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat, errs = append(lat, mine...), errs+myErrs
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds())
	}
	r := connResult{Connections: len(lat), Errors: errs, Seconds: elapsed, ConnPerSec: float64(len(lat)) / elapsed, P50us: pct(0.5), P99us: pct(0.99)}
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

func watch(target string, d time.Duration) {
	// The caller closes standard input when it has seen enough.
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	last := ""
	for end := time.Now().Add(d); time.Now().Before(end); {
		select {
		case <-stop:
			return
		default:
		}
		got, err := request(target)
		if err != nil {
			got = "error"
		}
		if got != last {
			fmt.Printf("%d %s\n", time.Now().UnixNano(), got)
			last = got
		}
		time.Sleep(2 * time.Millisecond)
	}
}
