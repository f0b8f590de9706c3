package bench_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/taskflow-watch/taskflow-watch/internal/poller"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
	"github.com/taskflow-watch/taskflow-watch/internal/store/storetest"
)

// token is the Prolific API token the fake expects.
const token = "bench-token"

// period is the poll schedule of the in-process pollers. Each cycle's tick
// is one period after the previous one, so every study is due again.
const (
	period   = 5 * time.Minute
	schedule = "@every 5m"
)

// studyID returns the i-th study id, 24 lowercase hex characters like Prolific's.
func studyID(i int) string { return fmt.Sprintf("be%022x", i) }

// progress is a study's three URLs, each with the given allocated count and
// room left, so no over-allocation alert fires.
func progress(allocated int) []rules.URLCounts {
	return []rules.URLCounts{
		{ExternalURL: "https://tasks.example/a", TotalAllocation: 100, Allocated: allocated},
		{ExternalURL: "https://tasks.example/b", TotalAllocation: 100, Allocated: allocated},
		{ExternalURL: "https://tasks.example/c", TotalAllocation: 200, Allocated: allocated, CapacityIncrements: 2},
	}
}

// fakeStudy is the i-th study as the fake serves it.
func fakeStudy(i, allocated int) prolifictest.Study {
	return prolifictest.Study{ID: studyID(i), Name: fmt.Sprintf("Bench study %d", i), URLs: progress(allocated)}
}

// requestCounts counts the fake's replies by endpoint, and the studies
// whose progress was fetched at least once.
type requestCounts struct {
	progress atomic.Int64
	study    atomic.Int64
	distinct atomic.Int64
	seen     sync.Map
}

// observe is the fake's OnRequest hook.
func (c *requestCounts) observe(r prolifictest.Request) {
	switch r.Endpoint {
	case prolifictest.EndpointProgress:
		c.progress.Add(1)
		if _, loaded := c.seen.LoadOrStore(r.StudyID, true); !loaded {
			c.distinct.Add(1)
		}
	case prolifictest.EndpointStudy:
		c.study.Add(1)
	}
}

// fleet is a set of watched studies in a fresh schema, a Prolific API that
// serves them, and the real client and store the worker uses.
type fleet struct {
	ids []string
	// dsn reaches the fresh schema; the store's connections carry appName.
	dsn     string
	appName string
	store   *store.Store
	client  *prolific.Client
	// apiURL is where the API is served.
	apiURL string
	// fake is the in-process API; nil when the API runs in another process.
	fake   *prolifictest.Server
	counts *requestCounts
	// latency is added to every reply of the in-process API, in nanoseconds.
	latency *atomic.Int64
}

// newFleet registers n studies, served by an in-process fake API behind a
// handler that can add latency to every reply (see fleet.latency).
func newFleet(b *testing.B, n int) *fleet {
	b.Helper()
	fake := prolifictest.New(token)
	b.Cleanup(fake.Close)
	for i := range n {
		fake.SetStudy(fakeStudy(i, 40))
	}
	counts := &requestCounts{}
	fake.OnRequest(counts.observe)
	latency := new(atomic.Int64)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A stand-in for the network and Prolific's own latency.
		if d := time.Duration(latency.Load()); d > 0 {
			time.Sleep(d)
		}
		fake.ServeHTTP(w, r)
	}))
	b.Cleanup(api.Close)
	f := newFleetAt(b, n, api.URL)
	f.fake, f.counts, f.latency, f.apiURL = fake, counts, latency, api.URL
	return f
}

// newFleetAt registers n studies in a fresh schema and points the client at
// apiURL, which must serve them.
func newFleetAt(b *testing.B, n int, apiURL string) *fleet {
	b.Helper()
	f := &fleet{appName: "taskflow-bench-" + strconv.FormatInt(time.Now().UnixNano(), 36), apiURL: apiURL}
	dsn, err := withApplicationName(storetest.NewDatabaseURL(b), f.appName)
	if err != nil {
		b.Fatal(err)
	}
	f.dsn = dsn
	f.store, err = store.Open(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(f.store.Close)
	f.client, err = prolific.New(prolific.Config{BaseURL: apiURL, Token: token})
	if err != nil {
		b.Fatal(err)
	}
	f.ids = make([]string, n)
	for i := range n {
		f.ids[i] = studyID(i)
	}
	if err := register(context.Background(), f.store, f.ids); err != nil {
		b.Fatal(err)
	}
	return f
}

// register watches every study through store.AddWatch, several at a time.
func register(ctx context.Context, s *store.Store, ids []string) error {
	now := time.Now()
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, id := range ids {
		g.Go(func() error {
			info := store.StudyInfo{ID: id, Name: fmt.Sprintf("Bench study %d", i), Status: rules.StatusActive}
			_, err := s.AddWatch(ctx, info, store.Watch{ChannelID: "CBENCH"}, now)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("registering %d studies: %w", len(ids), err)
	}
	return nil
}

// withApplicationName sets application_name on a connection string, so the
// benchmark can find the store's Postgres backends in pg_stat_activity.
func withApplicationName(dsn, name string) (string, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return dsn + " application_name=" + name, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("parsing the database URL: %w", err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// newPoller is the real poller over the fleet's client and store. A status
// read lasts an hour, so after the first cycle only progress is fetched.
func (f *fleet) newPoller(b *testing.B, concurrency int) *poller.Poller {
	b.Helper()
	p, err := poller.New(poller.Config{
		Schedule:      schedule,
		Concurrency:   concurrency,
		StatusRefresh: time.Hour,
		Owner:         f.appName,
		Logger:        slog.New(slog.DiscardHandler),
	}, f.client, f.store)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// probe is a connection of the benchmark's own to the fleet's schema, for
// counting rows and bytes and resetting state between repetitions.
func (f *fleet) probe(b *testing.B) *pgx.Conn {
	b.Helper()
	dsn, err := withApplicationName(f.dsn, f.appName+"-probe")
	if err != nil {
		b.Fatal(err)
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// ticks hands out cycle ticks one schedule period apart, starting just
// after the studies were registered. Ticks run ahead of the wall clock;
// ClaimDueStudies compares next_poll_at with the tick, so that is fine.
type ticks struct{ next time.Time }

func newTicks() *ticks { return &ticks{next: time.Now().Truncate(time.Second).Add(time.Second)} }

func (t *ticks) take() time.Time {
	tick := t.next
	t.next = t.next.Add(period)
	return tick
}

// mix is the requests one cycle makes per study.
type mix struct {
	// status is true when the study object is fetched besides progress.
	status bool
}

// expect checks the fake's counters moved by exactly one cycle of m.
func (f *fleet) expect(m mix, progressBefore, studyBefore int64) error {
	if f.counts == nil {
		return nil
	}
	n := int64(len(f.ids))
	gotProgress, gotStudy := f.counts.progress.Load()-progressBefore, f.counts.study.Load()-studyBefore
	wantStudy := int64(0)
	if m.status {
		wantStudy = n
	}
	if gotProgress != n || gotStudy != wantStudy {
		return fmt.Errorf("request mix: %d progress and %d study fetches, want %d and %d", gotProgress, gotStudy, n, wantStudy)
	}
	return nil
}

// cycle runs one full poller cycle at tick and checks it polled every
// study once with the requests of m.
func (f *fleet) cycle(ctx context.Context, p *poller.Poller, tick time.Time, m mix) (time.Duration, error) {
	var progressBefore, studyBefore int64
	if f.counts != nil {
		progressBefore, studyBefore = f.counts.progress.Load(), f.counts.study.Load()
	}
	start := time.Now()
	stats := p.RunOnce(ctx, tick)
	elapsed := time.Since(start)
	switch {
	case stats.Err != nil:
		return 0, fmt.Errorf("poll cycle: %w", stats.Err)
	case stats.Polled != len(f.ids) || stats.Failed != 0:
		return 0, fmt.Errorf("poll cycle polled %d studies with %d failures, want %d without failures", stats.Polled, stats.Failed, len(f.ids))
	}
	return elapsed, f.expect(m, progressBefore, studyBefore)
}

// bare fetches every study with the requests of m through the same client,
// concurrency requests at a time, and does nothing with the replies.
func (f *fleet) bare(ctx context.Context, concurrency int, m mix) (time.Duration, error) {
	var progressBefore, studyBefore int64
	if f.counts != nil {
		progressBefore, studyBefore = f.counts.progress.Load(), f.counts.study.Load()
	}
	start := time.Now()
	var next atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for range concurrency {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(f.ids) {
					return nil
				}
				if m.status {
					if _, err := f.client.Study(ctx, f.ids[i]); err != nil {
						return fmt.Errorf("bare fetch: %w", err)
					}
				}
				if _, err := f.client.Progress(ctx, f.ids[i]); err != nil {
					return fmt.Errorf("bare fetch: %w", err)
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	return elapsed, f.expect(m, progressBefore, studyBefore)
}

// backendPIDs lists the Postgres backends of the store's connection pool.
func (f *fleet) backendPIDs(ctx context.Context, probe *pgx.Conn) ([]int, error) {
	rows, err := probe.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, f.appName)
	if err != nil {
		return nil, fmt.Errorf("listing backends: %w", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, fmt.Errorf("listing backends: %w", err)
	}
	return pids, nil
}

// selfCPU is the CPU time (user and system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times on Linux.
const clockTick = 10 * time.Millisecond

// procCPU is the CPU time (user and system) of another process.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("reading CPU time of process %d: %w", pid, err)
	}
	// The command name may hold spaces: fields are counted after its ')'.
	rest := string(data[strings.LastIndexByte(string(data), ')')+1:])
	fields := strings.Fields(rest)
	if len(fields) < 13 {
		return 0, fmt.Errorf("reading CPU time of process %d: short stat line", pid)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("reading CPU time of process %d: bad stat line", pid)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// procsCPU sums procCPU over pids, skipping processes that have exited.
func procsCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		if d, err := procCPU(pid); err == nil {
			total += d
		}
	}
	return total
}

// median returns the middle value (the mean of the two middle values for
// an even count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ms is a duration in milliseconds, for metrics.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
