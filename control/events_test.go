package control

import "github.com/l4lb/l4lb/internal/events"

type eventT = events.Event

func eventsEvent(kind string) events.Event { return events.Event{Kind: kind, Upstream: "redis"} }
