package faults_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/taskflow-watch/taskflow-watch/internal/app"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
)

// cluster is a throwaway Postgres server the test owns, so it can stop
// and start it under a running worker.
type cluster struct {
	dir    string
	pgCtl  string
	port   int
	asUser []string
}

// findPostgresBinary looks for a PostgreSQL server program on PATH, then in
// the newest /usr/lib/postgresql/*/bin, as scripts/with-postgres.sh does.
func findPostgresBinary(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
	}
	return "", false
}

// startCluster initialises and starts a cluster on a free loopback port,
// removed when the test ends. Postgres refuses to run as root, so as root
// the server runs as the postgres user (or nobody) through runuser.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	initdb, ok1 := findPostgresBinary("initdb")
	pgCtl, ok2 := findPostgresBinary("pg_ctl")
	if !ok1 || !ok2 {
		t.Fatal("this test needs the PostgreSQL server programs initdb and pg_ctl (on PATH or in /usr/lib/postgresql/*/bin) " +
			"to stop and start a server of its own; install them (Debian/Ubuntu: apt-get install -y postgresql)")
	}
	dir, err := os.MkdirTemp("", "faults-pg-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{dir: dir, pgCtl: pgCtl, port: freePort(t)}
	if os.Geteuid() == 0 {
		name := "postgres"
		u, err := user.Lookup(name)
		if err != nil {
			name = "nobody"
			if u, err = user.Lookup(name); err != nil {
				t.Fatalf("running as root and found neither a postgres nor a nobody user to run Postgres as: %v", err)
			}
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		c.asUser = []string{"runuser", "-u", name, "--"}
	}
	t.Cleanup(func() {
		_ = c.run("-D", c.data(), "-m", "immediate", "-w", "stop")
		_ = os.RemoveAll(dir)
	})
	if out, err := c.command(initdb, "-D", c.data(), "-U", "postgres", "-A", "trust", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	c.start(t)
	return c
}

func (c *cluster) data() string { return filepath.Join(c.dir, "data") }

// url is the connection string of the cluster's postgres database.
func (c *cluster) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

func (c *cluster) command(program string, args ...string) *exec.Cmd {
	argv := append(slices.Clone(c.asUser), program)
	return exec.Command(argv[0], append(argv[1:], args...)...)
}

// run runs pg_ctl and returns its error with its output.
func (c *cluster) run(args ...string) error {
	var out bytes.Buffer
	cmd := c.command(c.pgCtl, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_ctl %v: %w\n%s", args, err, out.String())
	}
	return nil
}

// start starts the server and waits until it accepts connections.
func (c *cluster) start(t *testing.T) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50", c.port, c.dir)
	if err := c.run("-D", c.data(), "-l", filepath.Join(c.dir, "server.log"), "-w", "-t", "60", "-o", opts, "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
		t.Fatalf("%v\nserver log:\n%s", err, log)
	}
}

// stop shuts the server down the way an operator restarting it would:
// sessions are ended, and pg_ctl waits until the server is gone.
func (c *cluster) stop(t *testing.T) {
	t.Helper()
	if err := c.run("-D", c.data(), "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a loopback port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestPostgresRestartUnderARunningWorker stops the database under a running
// worker, in the worst moment for a poll (after its claim, before its
// record), keeps the worker running while its cycles fail, and starts the
// database again. The same App, never restarted, reports itself unready
// meanwhile and ready again after, stays alive throughout, and delivers a
// transition caused after the restart of the very study whose poll was cut.
func TestPostgresRestartUnderARunningWorker(t *testing.T) {
	t.Parallel()
	pg := startCluster(t)
	r := newRigOn(t, pg.url())
	id := studyID(1)
	w := startWorker(t, r.config(t, nil), app.Options{})
	// The App applied the migrations; the study is watched afterwards.
	r.watch(t, prolifictest.Study{ID: id, URLs: counts("https://p.example", 10, 12, 3)}, 0, "C0PG")
	if _, err := r.slack.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatalf("no alert before the outage: %v\nlogs:\n%s", err, w)
	}
	waitStatus(t, w.app.Addr(), "/readyz", 200, w)

	// The next poll of the study is claimed and then held in its fetch
	// while the database goes away.
	r.prolific.hold(id)
	if err := r.prolific.waitHeld(waitCtx(t)); err != nil {
		t.Fatalf("%v\nlogs:\n%s", err, w)
	}
	pg.stop(t)
	waitStatus(t, w.app.Addr(), "/readyz", 503, w)
	assertAlive(t, w.app.Addr())

	// The fetch completes while the database is down, so recording it fails.
	failedRecords := w.logs.count("recording poll failed")
	r.prolific.release()
	if err := w.logs.wait(waitCtx(t), "recording poll failed", failedRecords+1); err != nil {
		t.Fatalf("%v\nlogs:\n%s", err, w)
	}
	// The worker keeps ticking for a few seconds, each cycle failing to claim.
	failedClaims := w.logs.count("claiming due studies failed")
	if err := w.logs.wait(waitCtx(t), "claiming due studies failed", failedClaims+3); err != nil {
		t.Fatalf("%v\nlogs:\n%s", err, w)
	}
	assertAlive(t, w.app.Addr())
	// Metrics stay available while the database is away; only the outbox
	// gauges, which need it, are missing.
	if code, err := httpStatus(waitCtx(t), w.app.Addr(), "/metrics"); err != nil || code != 200 {
		t.Errorf("GET /metrics with the database down = %d, %v; want 200", code, err)
	}

	pg.start(t)
	waitStatus(t, w.app.Addr(), "/readyz", 200, w)
	// A transition caused after the restart reaches Slack.
	r.prolific.fake.SetProgress(id, counts("https://p.example", 10, 10, 3))
	if _, err := r.slack.WaitMessages(waitCtx(t), 2); err != nil {
		t.Fatalf("no alert after the restart: %v\nlogs:\n%s", err, w)
	}
	r.settle(t, w)
	if !w.running() {
		t.Fatalf("the worker stopped: %v", w.err)
	}
	assertAlive(t, w.app.Addr())
	got := alertsOf(r.slack)
	want := map[string]int{id + " over_allocation firing https://p.example": 1, id + " over_allocation resolved https://p.example": 1}
	if !sameKeys(got, want) {
		t.Errorf("alerts = %+v, want %v", got, want)
	}
	if t.Failed() {
		t.Logf("logs:\n%s", w)
	}
}
