package slackcmd_test

import (
	"context"
	"testing"
	"time"
)

// Once shutdown has begun (Wait was called), a new watch is refused without
// touching anything, while the one already pending still finishes.
func TestWatchDuringShutdownIsRefusedUnchanged(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	b := setup(t, setupOptions{gate: gate, ackTimeout: 10 * time.Millisecond})
	const otherID = "5f4a3b2c1d0e9f8a7b6c5d4e"
	b.addStudy(t, studyID, studyName)
	b.addStudy(t, otherID, "Other study")
	mustContain(t, b.command(t, "watch "+studyID), "Checking study `"+studyID+"` with Prolific")

	// Shutdown begins; its wait is cut short here so the test can go on.
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.handler.Wait(expired); err == nil {
		t.Fatal("Wait returned nil with a watch still pending")
	}
	mustContain(t, b.command(t, "watch "+otherID), "restarting", "nothing was changed")

	close(gate)
	mustContain(t, b.waitResponse(t), "Now watching", studyName)
	ctx, cancelWait := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelWait()
	if err := b.handler.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	studies := b.studies(t)
	if len(studies) != 1 || studies[0].ID != studyID {
		t.Fatalf("stored %+v, want only the watch that was pending", studies)
	}
}
