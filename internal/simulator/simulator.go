// Package simulator scripts a Prolific workspace whose Taskflow studies get
// into each kind of trouble taskflow-watch alerts on. It drives the
// prolifictest fake, so `worker demo` shows real alerts within a minute
// without any Prolific account, and CI checks the same scenario.
package simulator

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/taskflow-watch/taskflow-watch/internal/prolific"
	"github.com/taskflow-watch/taskflow-watch/internal/prolific/prolifictest"
	"github.com/taskflow-watch/taskflow-watch/internal/rules"
)

// The scripted studies.
const (
	// OverAllocated keeps allocating past its total with no screen-outs:
	// over_allocation and over_capacity fire.
	OverAllocated = "5e1d0a000000000000000001"
	// ScreenOuts gains capacity from screen-outs and goes over its total
	// within that capacity: capacity_increase events and an over_allocation
	// reported as within capacity.
	ScreenOuts = "5e1d0a000000000000000002"
	// Stalls stops recruiting, then moves again: stalled fires and resolves;
	// once its second URL is full it stalls again.
	Stalls = "5e1d0a000000000000000003"
	// Completes fills up and completes; Prolific's status webhook tells the
	// worker, which then polls it only hourly.
	Completes = "5e1d0a000000000000000004"
)

// Step numbers of the script's turning points.
const (
	stallResumesAt = 20
	completesAt    = 6
)

// Study describes one scripted study.
type Study struct {
	ID, Name, Story string
}

// Studies lists the scripted studies in the order the demo registers them.
func Studies() []Study {
	return []Study{
		{OverAllocated, "Demo: reaction times (over-allocates)", "allocates past its total with no screen-outs"},
		{ScreenOuts, "Demo: survey with screener (screen-outs)", "screen-outs add capacity; allocation passes the total within it"},
		{Stalls, "Demo: diary study (stalls)", "recruitment stops, then resumes"},
		{Completes, "Demo: short task (completes)", "fills up and completes"},
	}
}

// Scenario advances the scripted studies one step at a time.
type Scenario struct {
	server  *prolifictest.Server
	log     *slog.Logger
	narrate func(string)

	mu   sync.Mutex
	step int
}

// New loads the studies' starting state into server. narrate, when not
// nil, hears each turning point of the script that raises no alert of its
// own (recruitment resuming, a URL filling, a study completing), so a demo
// can say why the alerts that follow come.
func New(server *prolifictest.Server, log *slog.Logger, narrate func(string)) *Scenario {
	names := map[string]string{}
	for _, st := range Studies() {
		names[st.ID] = st.Name
	}
	server.SetStudy(prolifictest.Study{ID: OverAllocated, Name: names[OverAllocated], URLs: []rules.URLCounts{
		{ExternalURL: "https://lab.example.org/rt/arm-a", TotalAllocation: 10, Allocated: 7},
		{ExternalURL: "https://lab.example.org/rt/arm-b", TotalAllocation: 10, Allocated: 5},
	}})
	server.SetStudy(prolifictest.Study{ID: ScreenOuts, Name: names[ScreenOuts], URLs: []rules.URLCounts{
		{ExternalURL: "https://survey.example.org/screener", TotalAllocation: 10, Allocated: 8},
	}})
	server.SetStudy(prolifictest.Study{ID: Stalls, Name: names[Stalls], URLs: []rules.URLCounts{
		{ExternalURL: "https://diary.example.org/day-1", TotalAllocation: 20, Allocated: 3},
		{ExternalURL: "https://diary.example.org/day-2", TotalAllocation: 20, Allocated: 1},
	}})
	server.SetStudy(prolifictest.Study{ID: Completes, Name: names[Completes], URLs: []rules.URLCounts{
		{ExternalURL: "https://task.example.org/short", TotalAllocation: 10, Allocated: 2},
	}})
	if narrate == nil {
		narrate = func(string) {}
	}
	return &Scenario{server: server, log: log, narrate: narrate}
}

// Run advances the scenario every interval until ctx is done.
func (s *Scenario) Run(ctx context.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			s.Step(ctx)
		}
	}
}

// Step advances every study by one step of the script.
func (s *Scenario) Step(ctx context.Context) {
	s.mu.Lock()
	s.step++
	step := s.step
	s.mu.Unlock()

	// One more participant per step on each arm: A runs to 13 of 10, B
	// fills to 10. Once both are full the study has no room, so it never
	// reads as stalled.
	s.server.UpdateStudy(OverAllocated, func(st *prolifictest.Study) {
		if u := &st.URLs[0]; u.Allocated < 13 {
			u.Allocated++
		}
		if u := &st.URLs[1]; u.Allocated < u.TotalAllocation {
			u.Allocated++
		}
	})
	// A screen-out every other step adds a slot (up to 3); allocation
	// follows up to the capacity, 13 of 10, which is legitimate.
	s.server.UpdateStudy(ScreenOuts, func(st *prolifictest.Study) {
		u := &st.URLs[0]
		if step%2 == 0 && u.CapacityIncrements < 3 {
			u.CapacityIncrements++
		}
		if u.Allocated < u.Capacity() {
			u.Allocated++
		}
	})
	// Nothing moves until stallResumesAt; then day 2 recruits again until
	// it is full, and the study stalls again (day 1 still has room).
	if step == stallResumesAt {
		s.narrate("Demo: diary study (stalls) recruits again on day-2")
	}
	if step >= stallResumesAt {
		filled := false
		s.server.UpdateStudy(Stalls, func(st *prolifictest.Study) {
			if u := &st.URLs[1]; u.Allocated < u.TotalAllocation {
				u.Allocated++
				filled = u.Allocated == u.TotalAllocation
			}
		})
		if filled {
			s.narrate("Demo: diary study (stalls) has filled day-2 and stops recruiting again; day-1 still has room, so it will stall again")
		}
	}
	// Two per step until full, then COMPLETED, announced by webhook.
	s.server.UpdateStudy(Completes, func(st *prolifictest.Study) {
		if u := &st.URLs[0]; u.Allocated < u.TotalAllocation {
			u.Allocated = min(u.Allocated+2, u.TotalAllocation)
		}
	})
	if step == completesAt {
		s.narrate("Demo: short task (completes) is full and COMPLETED; Prolific's status webhook tells the worker, which now polls it hourly")
		s.server.SetStatus(Completes, prolific.StatusCompleted)
		for _, d := range s.server.Emit(ctx, prolific.EventStudyStatusChange, Completes, prolific.StatusCompleted) {
			if d.Err != nil || d.StatusCode >= 300 {
				s.log.Warn("simulator: status webhook not accepted", slog.Int("status", d.StatusCode), slog.Any("error", d.Err))
			}
		}
	}
}
