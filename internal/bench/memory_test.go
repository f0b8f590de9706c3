package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

// BenchmarkWorkerPeakRSS runs the real worker binary (`worker serve`, built
// as `make build` builds it) against a fresh schema with n watched studies
// and the in-process fake API, and reads the worker's peak resident set
// (VmHWM in /proc/<pid>/status) once its first full cycle is done: when
// every study's progress was fetched and a second cycle has begun (cycles
// never overlap, so a second fetch of any study means the first cycle
// recorded all its polls).
//
// Metrics (medians over the repetitions, each a new worker process):
// peak-rss-MB, rss-MB (resident when read) and cycle-s (from the first to
// the last study's first fetch).
func BenchmarkWorkerPeakRSS(b *testing.B) {
	bin := buildWorker(b)
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("studies=%d", n), func(b *testing.B) {
			f := newFleet(b, n)
			probe := f.probe(b)
			var peak, rss, cycle []float64
			for b.Loop() {
				// Every study due now, as right after registration.
				if _, err := probe.Exec(b.Context(), `UPDATE studies SET next_poll_at = now()`); err != nil {
					b.Fatal(err)
				}
				r := runWorker(b, bin, f)
				peak, rss, cycle = append(peak, r.peakMB), append(rss, r.rssMB), append(cycle, r.cycle.Seconds())
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(median(peak), "peak-rss-MB")
			b.ReportMetric(median(rss), "rss-MB")
			b.ReportMetric(median(cycle), "cycle-s")
		})
	}
}

// buildWorker builds cmd/worker with the flags of `make build`.
func buildWorker(b *testing.B) string {
	b.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		b.Fatalf("the go command is needed to build the worker: %v", err)
	}
	bin := filepath.Join(b.TempDir(), "worker")
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags", "-s -w", "-o", bin,
		"github.com/taskflow-watch/taskflow-watch/cmd/worker")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building the worker: %v\n%s", err, out)
	}
	return bin
}

// workerRun is what one worker process showed.
type workerRun struct {
	peakMB, rssMB float64
	cycle         time.Duration
}

// firstCycle follows the fake's requests until the worker's first cycle is done.
type firstCycle struct {
	n        int64
	total    atomic.Int64
	distinct atomic.Int64
	seen     map[string]*atomic.Bool
	started  atomic.Int64 // unix nanoseconds of the first fetch
	finished atomic.Int64 // unix nanoseconds of the last study's first fetch
}

func newFirstCycle(ids []string) *firstCycle {
	c := &firstCycle{n: int64(len(ids)), seen: make(map[string]*atomic.Bool, len(ids))}
	for _, id := range ids {
		c.seen[id] = new(atomic.Bool)
	}
	return c
}

// observe is the fake's OnRequest hook.
func (c *firstCycle) observe(r prolifictest.Request) {
	if r.Endpoint != prolifictest.EndpointProgress {
		return
	}
	now := time.Now().UnixNano()
	c.started.CompareAndSwap(0, now)
	c.total.Add(1)
	if seen, ok := c.seen[r.StudyID]; ok && !seen.Swap(true) {
		if c.distinct.Add(1) == c.n {
			c.finished.Store(now)
		}
	}
}

// done reports whether every study was fetched and a second cycle began.
func (c *firstCycle) done() bool { return c.distinct.Load() == c.n && c.total.Load() > c.n }

// runWorker starts `worker serve`, waits for its first cycle, reads its
// memory and stops it.
func runWorker(b *testing.B, bin string, f *fleet) workerRun {
	b.Helper()
	follow := newFirstCycle(f.ids)
	f.fake.OnRequest(follow.observe)
	defer f.fake.OnRequest(f.counts.observe)

	var logs bytes.Buffer
	cmd := exec.Command(bin, "serve")
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"DATABASE_URL=" + f.dsn,
		"PROLIFIC_TOKEN=" + token,
		"PROLIFIC_API_URL=" + f.apiURL,
		"POLL_SCHEDULE=@every 1s",
		"HTTP_ADDR=127.0.0.1:0",
		"LOG_LEVEL=warn",
	}
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting the worker: %v", err)
	}
	// exited closes once the process is gone, whoever is waiting for it.
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}

	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := f.fake.Wait(ctx, follow.done); err != nil {
		stop()
		b.Fatalf("waiting for the worker's first cycle (%d of %d studies fetched): %v\nworker output:\n%s",
			follow.distinct.Load(), follow.n, err, logs.String())
	}
	peak, rss, err := memoryOf(cmd.Process.Pid)
	stop()
	if err != nil {
		b.Fatal(err)
	}
	return workerRun{
		peakMB: peak,
		rssMB:  rss,
		cycle:  time.Duration(follow.finished.Load() - follow.started.Load()),
	}
}

// memoryOf reads a process's peak and current resident set in MB (2^20 bytes).
func memoryOf(pid int) (peakMB, rssMB float64, err error) {
	file, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, fmt.Errorf("reading the worker's memory: %w", err)
	}
	defer file.Close()
	fields := map[string]*float64{"VmHWM:": &peakMB, "VmRSS:": &rssMB}
	found := 0
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		parts := strings.Fields(scanner.Text())
		if len(parts) != 3 || parts[2] != "kB" {
			continue
		}
		if dst, ok := fields[parts[0]]; ok {
			kb, err := strconv.ParseFloat(parts[1], 64)
			if err != nil {
				return 0, 0, fmt.Errorf("reading the worker's memory: %s: %w", parts[0], err)
			}
			*dst = kb / 1024
			found++
		}
	}
	if err := scanner.Err(); err != nil {
		return 0, 0, fmt.Errorf("reading the worker's memory: %w", err)
	}
	if found != len(fields) {
		return 0, 0, fmt.Errorf("reading the worker's memory: VmHWM or VmRSS missing from /proc/%d/status", pid)
	}
	return peakMB, rssMB, nil
}
