package pool

import (
	"errors"
	"fmt"
	"strconv"
)

// Sentinel errors; match them with errors.Is.
var (
	ErrUnknownState   = errors.New("pool: unknown state")
	ErrUnknownMethod  = errors.New("pool: unknown method")
	ErrUnknownAllDown = errors.New("pool: unknown all_down policy")
	ErrBadPool        = errors.New("pool: invalid pool")
)

// State is the state of a Host. The zero value is StateUp.
type State uint32

const (
	StateUp         State = iota // takes new connections (if its weight is above zero)
	StateDown                    // marked down by a health check or by passive health
	StateManualDown              // taken out by an operator; only a manual up revives it
	StateDraining                // no new connections; existing ones finish
)

var stateNames = [...]string{
	StateUp:         "up",
	StateDown:       "down",
	StateManualDown: "manual_down",
	StateDraining:   "draining",
}

func (s State) valid() bool { return int(s) < len(stateNames) }

// String returns the name used in the config, the control API and the logs.
func (s State) String() string {
	if s.valid() {
		return stateNames[s]
	}
	return "State(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// admin reports whether s is set by an operator, and so sticky against
// automatic changes.
func (s State) admin() bool { return s == StateManualDown || s == StateDraining }

// ParseState parses a state name as returned by String.
func ParseState(name string) (State, error) {
	for i, n := range stateNames {
		if n == name {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("%w %q", ErrUnknownState, name)
}

// MarshalText encodes s as its name, so it reads well in JSON.
func (s State) MarshalText() ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("%w %d", ErrUnknownState, uint32(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes a name as returned by String.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// AllDown says what an Upstream does when no host of any pool is usable.
// The zero value is AllDownReject.
type AllDown int

const (
	AllDownReject AllDown = iota // pick nothing; the connection is refused
	AllDownTryAll                // pick among down hosts anyway (never manual_down or draining)
)

// String returns the config name: "reject" or "try_all".
func (a AllDown) String() string {
	switch a {
	case AllDownReject:
		return "reject"
	case AllDownTryAll:
		return "try_all"
	}
	return "AllDown(" + strconv.Itoa(int(a)) + ")"
}

// ParseAllDown parses "reject" or "try_all"; "" means reject.
func ParseAllDown(name string) (AllDown, error) {
	switch name {
	case "", "reject":
		return AllDownReject, nil
	case "try_all":
		return AllDownTryAll, nil
	}
	return 0, fmt.Errorf("%w %q", ErrUnknownAllDown, name)
}
