package faults_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// workerBinary is cmd/worker built once by TestMain for the tests that run
// the worker as a real process (signals, crashes, exit codes).
var workerBinary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// runTests builds cmd/worker into a temporary folder, runs the tests and
// removes the folder. `go test` puts its own go command first on PATH.
func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "faults-worker-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating a folder for the worker binary:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	workerBinary = filepath.Join(dir, "worker")
	build := exec.Command("go", "build", "-o", workerBinary, "github.com/taskflow-watch/taskflow-watch/cmd/worker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building cmd/worker for the process tests:", err)
		return 1
	}
	return m.Run()
}

// process is `worker serve` running as a child process.
type process struct {
	cmd    *exec.Cmd
	logs   *logSink
	addr   string
	exited chan struct{}
	err    error
}

// startProcess runs `worker serve` with exactly env and waits until it
// logs that it started. The test's cleanup kills it if it still runs.
func startProcess(t *testing.T, env map[string]string) *process {
	t.Helper()
	p := &process{logs: newLogSink(), exited: make(chan struct{})}
	p.cmd = exec.Command(workerBinary, "serve")
	p.cmd.Env = []string{"LOG_LEVEL=debug"}
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting the worker: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if p.running() {
			_ = p.cmd.Process.Kill()
		}
		<-p.exited
	})
	ctx, cancel := context.WithCancel(waitCtx(t))
	defer cancel()
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := p.logs.wait(ctx, "worker started", 1); err != nil {
		t.Fatalf("the worker did not start (exit: %v): %v\nlogs:\n%s", p.err, err, p.logs)
	}
	addr, ok := p.logs.field("worker started", "http_addr")
	if !ok {
		t.Fatalf("the worker did not log its address\nlogs:\n%s", p.logs)
	}
	p.addr = addr
	return p
}

// running reports whether the process has not exited.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// String returns the process's output, for failure messages.
func (p *process) String() string { return p.logs.String() }

// kill sends SIGKILL, as a crash or an OOM kill would, and waits for the end.
func (p *process) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("killing the worker: %v", err)
	}
	<-p.exited
}

// terminate sends SIGTERM and waits up to limit for the process to exit,
// returning how long it took; it fails the test unless the exit status is 0.
func (p *process) terminate(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("signalling the worker: %v", err)
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		t.Fatalf("the worker did not exit within %v of SIGTERM\nlogs:\n%s", limit, p.logs)
	}
	took := time.Since(start)
	var exitErr *exec.ExitError
	switch {
	case errors.As(p.err, &exitErr):
		t.Fatalf("the worker exited with %v after SIGTERM\nlogs:\n%s", exitErr, p.logs)
	case p.err != nil:
		t.Fatalf("waiting for the worker: %v", p.err)
	}
	return took
}
