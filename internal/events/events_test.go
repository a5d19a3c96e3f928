package events

import (
	"fmt"
	"testing"
)

func TestReplayThenLive(t *testing.T) {
	f := New(3)
	for i := 1; i <= 5; i++ {
		f.Publish(Event{Kind: HostDown, Host: fmt.Sprint(i)})
	}
	replay, sub := f.Subscribe(0, 10)
	defer sub.Close()
	// Only the last 3 are kept.
	if len(replay) != 3 || replay[0].Seq != 3 || replay[2].Seq != 5 {
		t.Fatalf("replay %+v", replay)
	}
	if r := f.Recent(4); len(r) != 1 || r[0].Seq != 5 {
		t.Fatalf("Recent(4) = %+v", r)
	}
	f.Publish(Event{Kind: HostUp})
	if e := <-sub.C(); e.Seq != 6 || e.Kind != HostUp || e.Time.IsZero() {
		t.Fatalf("live event %+v", e)
	}
}

func TestSlowSubscriberIsDroppedNotBlocking(t *testing.T) {
	f := New(10)
	_, sub := f.Subscribe(0, 2)
	for i := 0; i < 5; i++ {
		f.Publish(Event{Kind: HostUp}) // must not block
	}
	n := 0
	for range sub.C() {
		n++
	}
	if n != 2 || !sub.Dropped() {
		t.Fatalf("got %d events, dropped=%v; want 2, true", n, sub.Dropped())
	}
	sub.Close() // harmless after a drop
}

func TestCloseStopsDelivery(t *testing.T) {
	f := New(10)
	_, sub := f.Subscribe(0, 2)
	sub.Close()
	sub.Close()
	f.Publish(Event{Kind: HostUp})
	if _, ok := <-sub.C(); ok {
		t.Fatal("event after Close")
	}
	if sub.Dropped() {
		t.Fatal("Close is not a drop")
	}
}
