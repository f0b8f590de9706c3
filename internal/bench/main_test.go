package bench_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

// fakeAPIEnv, when set to a study count, turns the test binary into a
// standalone fake Prolific API serving that many studies: it prints its URL
// on stdout and serves until stdin closes. The throughput benchmark runs the
// fake this way so that the fake's CPU time is not counted as the worker's.
const fakeAPIEnv = "TASKFLOW_BENCH_FAKE_API_STUDIES"

// TestMain serves the fake API when the binary was started as one (see
// fakeAPIEnv) and runs the benchmarks otherwise.
func TestMain(m *testing.M) {
	if n := os.Getenv(fakeAPIEnv); n != "" {
		os.Exit(serveFakeAPI(n))
	}
	os.Exit(m.Run())
}

// serveFakeAPI is the body of the standalone fake API process.
func serveFakeAPI(count string) int {
	n, err := strconv.Atoi(count)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", fakeAPIEnv, err)
		return 2
	}
	fake := prolifictest.New(token)
	for i := range n {
		fake.SetStudy(fakeStudy(i, 40))
	}
	fake.Start()
	defer fake.Close()
	fmt.Println(fake.URL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// fakeAPIProcess is a standalone fake API serving n studies; see fakeAPIEnv.
type fakeAPIProcess struct {
	url string
	pid int
}

// startFakeAPI starts the standalone fake API, stopped when the benchmark ends.
func startFakeAPI(b *testing.B, n int) fakeAPIProcess {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fakeAPIEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting the fake API process: %v", err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("reading the fake API's URL: %v", err)
	}
	return fakeAPIProcess{url: strings.TrimSpace(line), pid: cmd.Process.Pid}
}
