// Package metrics exposes the worker's Prometheus metrics. It implements
// the observer interfaces of the poller and the dispatcher, and reads the
// outbox depth from the store at scrape time.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/taskflow-watch/taskflow-watch/internal/notify"
	"github.com/taskflow-watch/taskflow-watch/internal/poller"
	"github.com/taskflow-watch/taskflow-watch/internal/store"
)

// OutboxReader reads the outbox depth at scrape time.
type OutboxReader interface {
	OutboxStats(ctx context.Context) (store.OutboxStats, error)
}

// Metrics holds the collectors on a registry of its own, so tests and
// several Apps in one process never collide on the global registry.
type Metrics struct {
	registry      *prometheus.Registry
	polls         *prometheus.CounterVec
	pollLatency   prometheus.Histogram
	observations  prometheus.Counter
	alerts        *prometheus.CounterVec
	notifications *prometheus.CounterVec
	lastCycle     prometheus.Gauge
	cycleDuration prometheus.Histogram
}

// New registers every collector. now is the clock for the outbox age.
func New(outbox OutboxReader, now func() time.Time, log *slog.Logger) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskflow_polls_total",
			Help: "Study polls by outcome (ok, rate_limited, server_error, auth_error, not_found, malformed, network_error, error, store_error).",
		}, []string{"outcome"}),
		pollLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "taskflow_poll_duration_seconds",
			Help:    "Time to fetch and record one study poll.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 13),
		}),
		observations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskflow_observations_written_total",
			Help: "Progress observations stored (polls whose progress changed).",
		}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskflow_alert_transitions_total",
			Help: "Alert transitions by rule and transition (firing, resolved, event).",
		}, []string{"rule", "transition"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskflow_notifications_total",
			Help: "Slack delivery attempts by outcome (sent, retry, failed) and reason (the Slack error code, or empty).",
		}, []string{"outcome", "reason"}),
		lastCycle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "taskflow_last_cycle_completed_timestamp_seconds",
			Help: "Unix time at which this replica last completed a poll cycle.",
		}),
		cycleDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "taskflow_cycle_duration_seconds",
			Help:    "Time from a tick to the end of its poll cycle.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
	}
	m.registry.MustRegister(m.polls, m.pollLatency, m.observations, m.alerts, m.notifications, m.lastCycle, m.cycleDuration,
		&outboxCollector{outbox: outbox, now: now, log: log},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	// A failing collector (the outbox depth while the database is away) must
	// not take every other series down with it.
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// PollDone implements poller.Observer.
func (m *Metrics) PollDone(outcome poller.Outcome, latency time.Duration, res store.PollResult) {
	m.polls.WithLabelValues(string(outcome)).Inc()
	m.pollLatency.Observe(latency.Seconds())
	if res.ObservationWritten {
		m.observations.Inc()
	}
	for _, tr := range res.Transitions {
		m.alerts.WithLabelValues(string(tr.Rule), string(tr.State)).Inc()
	}
}

// CycleDone implements poller.Observer. A cycle whose claim failed (the
// database is away) is not a completed cycle, so the staleness of
// taskflow_last_cycle_completed_timestamp_seconds shows the outage.
func (m *Metrics) CycleDone(stats poller.CycleStats) {
	if stats.Err != nil {
		return
	}
	m.lastCycle.Set(float64(stats.Finished.UnixNano()) / 1e9)
	m.cycleDuration.Observe(stats.Finished.Sub(stats.Tick).Seconds())
}

// Delivered implements notify.DispatchObserver.
func (m *Metrics) Delivered(outcome notify.DeliveryOutcome, reason string) {
	m.notifications.WithLabelValues(string(outcome), reason).Inc()
}

// outboxCollector reads the outbox depth once per scrape.
type outboxCollector struct {
	outbox OutboxReader
	now    func() time.Time
	log    *slog.Logger
}

var (
	outboxPendingDesc = prometheus.NewDesc("taskflow_outbox_pending",
		"Notifications waiting for delivery.", nil, nil)
	outboxAgeDesc = prometheus.NewDesc("taskflow_outbox_oldest_pending_age_seconds",
		"Age of the oldest notification waiting for delivery (0 when none).", nil, nil)
)

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxPendingDesc
	ch <- outboxAgeDesc
}

func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := c.outbox.OutboxStats(ctx)
	if err != nil {
		c.log.Warn("metrics: reading outbox depth failed", slog.Any("error", err))
		ch <- prometheus.NewInvalidMetric(outboxPendingDesc, err)
		return
	}
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(c.now().Sub(st.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(outboxPendingDesc, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(outboxAgeDesc, prometheus.GaugeValue, age)
}
