package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/simulator"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
	"github.com/taskflow-watch/taskflow-watch/internal/testkit"
)

// TestDemoScenario runs `worker demo` for a bounded time and checks that
// every scripted situation produced its alerts, and nothing else did.
func TestDemoScenario(t *testing.T) {
	t.Parallel()
	base, schema := storetest.BaseURL(t), demoSchemaPrefix+"_"+storetest.SchemaName(t)
	t.Cleanup(func() { _ = store.DropSchema(context.Background(), base, schema) })
	env := testEnv{"DATABASE_URL": base}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, w := io.Pipe()
	var stderr testkit.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--step", "1s", "--stall-after", "6s", "--schedule", "@every 1s", "--schema", schema}, env.get, w, &stderr)
		w.Close()
	}()

	want := map[string]int{
		simulator.OverAllocated + " over_allocation firing": 1,
		simulator.OverAllocated + " over_capacity firing":   1,
		simulator.ScreenOuts + " capacity_increase event":   3,
		simulator.ScreenOuts + " over_allocation firing":    1,
		simulator.Stalls + " stalled firing":                1,
		simulator.Stalls + " stalled resolved":              1,
	}
	got := map[string]int{}
	complete := func() bool {
		for k, n := range want {
			if got[k] < n {
				return false
			}
		}
		return true
	}
	lines := bufio.NewScanner(out)
	for !complete() && lines.Scan() {
		var line struct {
			StudyID string `json:"study_id"`
			Rule    string `json:"rule"`
			State   string `json:"state"`
			Text    string `json:"text"`
		}
		if err := json.Unmarshal(lines.Bytes(), &line); err != nil {
			t.Fatalf("stdout line is not JSON: %q", lines.Text())
		}
		got[line.StudyID+" "+line.Rule+" "+line.State]++
		if line.StudyID == simulator.ScreenOuts && line.Rule == "over_allocation" && !strings.Contains(line.Text, "within") {
			t.Errorf("screen-out over-allocation not reported as within capacity: %q", line.Text)
		}
	}
	// Let a few more cycles run: nothing unexpected may follow.
	time.AfterFunc(3*time.Second, cancel)
	for lines.Scan() {
		t.Errorf("unexpected alert after the scenario: %s", lines.Text())
	}
	if err := <-done; err != nil {
		t.Fatalf("demo: %v\n%s", err, stderr.String())
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d alerts, want %d (all: %v)", k, got[k], n, got)
		}
	}

	dsn, err := store.WithSearchPath(base, schema)
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.GetStudy(context.Background(), simulator.Completes)
	if err != nil || st.Status != prolific.StatusCompleted || !strings.Contains(st.PollNote, "COMPLETED") {
		t.Errorf("completed study = %+v, %v; want COMPLETED from the status webhook with a polling note", st, err)
	}
	if !strings.Contains(stderr.String(), "short task (completes) is full and COMPLETED") {
		t.Errorf("demo did not say when the study completed:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "where the demo studies ended up") {
		t.Errorf("demo did not print its summary:\n%s", stderr.String())
	}
}

// A second demo on the schema another one is using is refused before it
// drops anything.
func TestDemoRefusesASchemaInUse(t *testing.T) {
	t.Parallel()
	base, schema := storetest.BaseURL(t), demoSchemaPrefix+"_"+storetest.SchemaName(t)
	release, err := store.LockSchema(context.Background(), base, schema)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runCmd(t, testEnv{"DATABASE_URL": base}, "demo", "--schema", schema, "--duration", "1s")
	if err == nil || !strings.Contains(err.Error(), "another demo is running") {
		t.Errorf("demo on a locked schema = %v, want it refused", err)
	}
	release()
	// Released, the schema can be locked again.
	again, err := store.LockSchema(context.Background(), base, schema)
	if err != nil {
		t.Fatalf("locking a released schema: %v", err)
	}
	again()
}

func TestDemoRefusesForeignSchemas(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--schema", "public"},                   // not the demo's
		{"--schema", "taskflow_demo x"},          // not a plain identifier
		{"--schema", `taskflow_demo"; select 1`}, // nor this
		{"--step", "0s"},                         // the simulator needs a positive step
		{"--stall-after", "-5s"},                 // and a positive threshold
		{"--schedule", "nope"},                   // the poll schedule is a cron spec, named as the flag
		{"extra"},                                // the demo takes no arguments
	} {
		_, err := runCmd(t, testEnv{"DATABASE_URL": "postgres://unused"}, append([]string{"demo"}, args...)...)
		if !errors.Is(err, errUsage) {
			t.Errorf("demo %v = %v, want a usage error before anything is dropped", args, err)
		}
	}
}
